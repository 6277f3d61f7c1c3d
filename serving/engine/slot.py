"""Per-request state shared by both decoders: prompt encoding, output text, stop strings,
streaming, accounting, and the final event.

A slot lives from `Engine.submit` to its `Finished` event. Each scheduler tick calls
`prepare(now)` (→ a `StepInput`, or None when the slot finished without needing a step) and then
`advance(output, now)` with that row's logits. Slots are touched by the scheduler thread only.
"""

from __future__ import annotations

import abc
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from data_prep.format import EOS, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, PAD
from serving.engine.batch import StepInput, StepOutput
from serving.engine.types import Delta, Finished, FinishReason, GenerationRequest, RequestStats

log = logging.getLogger(__name__)

EventSink = Callable[[Delta | Finished], None]


@dataclass
class ModelInfo:
    """What slots need to know about the served model."""

    tokenizer: Tokenizer
    special: dict[str, int]  # special token → id
    device: torch.device
    vocab_size: int
    max_context: int  # the model's max_seq_len: prompt + span (+ suffix) must fit
    fim: bool  # AR model trained with FIM (train.fim_rate > 0): infill with a PSM prompt


def encode_context(req: GenerationRequest, info: ModelInfo, objective: str) -> tuple[list[int], list[int]]:
    """(context ids, suffix ids) for a request.

    The context starts with `<|endoftext|>`, the separator every packed training document
    follows. DLM infill: the suffix goes after the canvas. AR infill with a FIM-trained model:
    `<|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|>` (PSM) and the middle is
    generated; an AR model trained without FIM cannot see a suffix and continues the prefix
    only (documented limitation, not an error, so an AR baseline still answers infill requests).
    """
    sp, tok = info.special, info.tokenizer
    prompt = tok.encode(req.prompt).ids
    suffix = tok.encode(req.suffix).ids if req.suffix else []
    if objective == "dlm":
        return [sp[EOS], *prompt], suffix
    if req.suffix is not None and info.fim:
        return [sp[EOS], sp[FIM_PREFIX], *prompt, sp[FIM_SUFFIX], *suffix, sp[FIM_MIDDLE]], []
    return [sp[EOS], *prompt], []


class Slot(abc.ABC):
    """Base: output text, stop strings, streaming and accounting; subclasses decode."""

    def __init__(self, req: GenerationRequest, info: ModelInfo, on_event: EventSink, t_submit: float,
                 prompt_tokens: int):
        self.req, self.info, self.on_event = req, info, on_event
        self.request_id = req.request_id
        self.t_submit = t_submit
        self.t_deadline = t_submit + req.deadline_s if req.deadline_s is not None else None
        self.stats = RequestStats(prompt_tokens=prompt_tokens)
        self.started = False
        self.finished: Finished | None = None
        self.on_release: Callable[[str], None] | None = None  # engine hook: frees the request id
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator(device=info.device).manual_seed(seed)
        self.text = ""  # the completion so far (final tokens only, cut at a stop string)
        self.stop_word = ""  # the stop string that cut it, once one has
        self._emitted = ""
        self._holdback = max((len(s) for s in req.stop if s), default=1) - 1
        sp = info.special
        self.eos_ids = {sp[EOS], sp[PAD]}

    # -- scheduler interface -------------------------------------------------------------
    @abc.abstractmethod
    def prepare(self, now: float) -> StepInput | None:
        """This tick's model input, or None when the slot finished without needing a step."""

    @abc.abstractmethod
    def advance(self, out: StepOutput, now: float) -> None:
        """Consume this row's logits (and KV): commit tokens, stream, maybe finish."""

    def mark_step(self, now: float) -> None:
        """Called once per model step before `advance` (queue time ends at the first one)."""
        if not self.started:
            self.started = True
            self.stats.queue_time_s = now - self.t_submit
        self.stats.forward_passes += 1

    def deadline_passed(self, now: float) -> bool:
        return self.t_deadline is not None and now >= self.t_deadline

    # -- helpers for subclasses -----------------------------------------------------------
    def banned_logits_mask(self, banned: list[str]) -> torch.Tensor:
        mask = torch.zeros(self.info.vocab_size, dtype=torch.bool, device=self.info.device)
        mask[[self.info.special[t] for t in banned]] = True
        return mask

    def set_output(self, ids: list[int], now: float) -> bool:
        """Decode the final token ids into `self.text`, cut at the earliest stop string.

        Returns True when a stop string was found (the caller then finishes with "stop"). Then
        `completion_tokens` counts the tokens through the end of that stop string only (a DLM may
        have committed more), so tokens per forward compare fairly with AR.
        """
        if ids and self.stats.time_to_first_commit_s == 0.0:
            self.stats.time_to_first_commit_s = now - self.t_submit
        decode = lambda k: self.info.tokenizer.decode(ids[:k], skip_special_tokens=False)
        text = decode(len(ids))
        hits = [(i, len(s), s) for s in self.req.stop if s and (i := text.find(s)) >= 0]
        self.stats.completion_tokens = len(ids)
        if not hits:
            self.text = text
            return False
        cut, n, self.stop_word = min(hits)  # the earliest; at a tie the shorter one
        self.text = text[:cut]
        lo, hi = 1, len(ids)  # smallest k whose text already reaches the end of the stop string
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if len(decode(mid)) >= cut + n else (mid + 1, hi)
        self.stats.completion_tokens = lo
        return True

    def stream(self, final: bool = False) -> None:
        """Emit the not-yet-sent part of `self.text` as a Delta (streaming requests only).

        Until the end, the last len(longest stop)-1 characters are held back (they might start a
        stop string), as is a trailing U+FFFD (a UTF-8 character split across tokens).
        """
        if not self.req.stream:
            return
        safe = self.text
        if not final:
            safe = safe[: len(safe) - self._holdback] if self._holdback else safe
            safe = safe.rstrip("\ufffd")
        if len(safe) > len(self._emitted) and safe.startswith(self._emitted):
            delta, self._emitted = safe[len(self._emitted):], safe
            self._send(Delta(self.request_id, delta))

    def finish(self, reason: FinishReason, now: float, error: str | None = None) -> None:
        if self.finished is not None:
            return
        self.stream(final=True)
        self.stats.total_time_s = now - self.t_submit
        self.finished = Finished(self.request_id, self.text, reason, self.stats, error,
                                 self.stop_word if reason == "stop" else "")
        if self.on_release is not None:  # before the event, so the caller may reuse the id at once
            self.on_release(self.request_id)
        self._send(self.finished)

    def _send(self, event: Delta | Finished) -> None:
        try:
            self.on_event(event)
        except Exception:  # a broken callback must not take the scheduler down
            log.exception("on_event callback failed for request %s", self.request_id)
