"""Masked-diffusion decoding: block-wise (semi-autoregressive) denoising of a canvas of masks.

Sequence layout (positions are contiguous, RoPE sees one document):

    [<|endoftext|> prompt] [canvas: max_tokens × <|mask|>] [suffix, when infilling]
     0 .. Lp-1               Lp .. Lp+G-1                    Lp+G .. L-1

The canvas is denoised one block of `block_length` positions at a time, left to right. Each
step predicts every masked position of the current block and commits some of them by policy
(threshold τ / fixed steps with low-confidence remasking / entropy / random); a committed token
never changes. The suffix is attended bidirectionally like everything else.

Prefix KV cache (Fast-dLLM "prefix cache", `use_cache`): the first step of each block is a full
forward whose keys/values for the prompt and the committed blocks are kept; the block's later
steps recompute only the current block and everything after it. With `cache_suffix` ("dual
cache") the keys of the later blocks and the suffix are kept as well and only the block is
recomputed. The approximation: in a bidirectional model those cached keys depend on the canvas,
which changes as the block is filled; they are refreshed only when a block completes. The
no-cache path (`use_cache=False`) is exact: a full forward every step.

`cache_refresh="append"` replaces that refresh: the first step of a new block runs only the
block just committed and the new block (+ everything after it, without the dual cache) against
the cache, and appends the committed block's keys. Only the prompt's forward covers the whole
sequence. Further approximation: cached keys are never recomputed, so the prompt's keys are
those of the all-mask canvas and each block's those of the moment it was committed. On a model
trained to confidence it cost nothing with the prefix cache and one line in 40 with the dual
cache, for 1.1–1.2× more speed (benchmarks/RESULTS.md, table 6c).

End of text: the output ends at the first committed `<|endoftext|>` or `<|pad|>` (variable-length
infill: a fixed span where a model trained with infill padding closes the span early). Decoding
stops as soon as every position before that end token is committed: later positions cannot
change the output. For the same reason, once such a token, or one whose text contains a stop
string (a line break for single-line infill), is committed, positions after it are no longer
predicted or committed: a short line in a 32-token canvas costs the steps of the line, not of the
canvas. Deadline: the next step commits the argmax of every remaining mask.
Not handled: length search over several span sizes, remasking of committed tokens (ReMDM).
"""

from __future__ import annotations

import torch

from data_prep.format import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, MASK
from serving.engine.batch import StepInput, StepOutput
from serving.engine.sampling import choose_tokens, commit_order_scores, select_commits, transfer_schedule
from serving.engine.slot import EventSink, ModelInfo, Slot
from serving.engine.types import GenerationRequest


class DLMSlot(Slot):
    def __init__(self, req: GenerationRequest, info: ModelInfo, on_event: EventSink, t_submit: float,
                 context: list[int], suffix: list[int]):
        super().__init__(req, info, on_event, t_submit, prompt_tokens=len(context) + len(suffix))
        self.params = req.dlm
        self.mask_id = info.special[MASK]
        self.Lp, self.G = len(context), req.max_tokens
        ids = context + [self.mask_id] * self.G + suffix
        self.x = torch.tensor(ids, dtype=torch.long, device=info.device)  # (L,)
        self.positions = torch.arange(len(ids), device=info.device)
        self.committed = torch.zeros(self.G, dtype=torch.bool, device=info.device)  # canvas only
        self.logp = torch.zeros(self.G, device=info.device)  # log-probability of each commit
        self.block = 0
        self.step_in_block = 0
        self.schedule: list[int] | None = None  # tokens per step for this block (fixed-steps policies)
        self.cached: list | None = None  # per layer (1, H_kv, S, D): prefix (+ suffix) keys/values
        self.n_prefix = 0  # cached[:, :, :n_prefix] is the prefix; the rest (dual cache) is what follows the block
        self.appending: int | None = None  # cache_refresh="append": start of the block just committed
        self.mode = "full"  # what this tick's StepInput covers: full | refresh | append | tail | block | deadline
        self.banned = self.banned_logits_mask([MASK, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE])
        self.limit = self.G  # canvas index of the earliest committed token that ends the output

    def block_span(self) -> tuple[int, int]:
        """Sequence indices [start, end) of the current block."""
        start = self.Lp + self.block * self.params.block_length
        return start, min(start + self.params.block_length, self.Lp + self.G)

    def prepare(self, now: float) -> StepInput | None:
        if self.deadline_passed(now):
            self.mode = "deadline"
        elif not self.params.use_cache:
            self.mode = "full"
        elif self.cached is None:
            self.mode = "refresh"
        elif self.appending is not None:
            self.mode = "append"
        else:
            self.mode = "block" if self.params.cache_suffix else "tail"
        bs, be = self.block_span()
        # logits only where a token is still to be chosen: every mask left (deadline) or this
        # block's, before the earliest committed end of the output
        self.todo = self._todo(be)
        if not self.todo.numel():  # the "end" was a stop string that whitespace healing strips
            self.limit = self.G
            self.todo = self._todo(be)
        if self.mode in ("deadline", "full", "refresh"):
            return StepInput(self.x, self.positions, want_kv=self.mode == "refresh", logits_idx=self.todo)
        if self.mode == "append":  # the block just committed + this block (+ the tail) on the cache
            a, end = self.appending, be if self.params.cache_suffix else self.x.numel()
            past = self._append_past(be - bs)
            return StepInput(self.x[a:end], self.positions[a:end], past=past, want_kv=True,
                             logits_idx=self.todo - a)
        end = be if self.mode == "block" else self.x.numel()
        return StepInput(self.x[bs:end], self.positions[bs:end], past=self.cached, logits_idx=self.todo - bs)

    def _append_past(self, block_len: int) -> list:
        """The cache without the keys an append step recomputes: the prefix, and (dual cache) what
        follows the new block; the new block's own stale keys open that second part."""
        if not self.params.cache_suffix:
            return self.cached
        return _without(self.cached, self.n_prefix, self.n_prefix + block_len)

    def _todo(self, be: int) -> torch.Tensor:
        todo = (~self.committed[: self.limit]).nonzero().squeeze(-1) + self.Lp  # sequence indices
        return todo if self.mode == "deadline" else todo[todo < be]

    def advance(self, out: StepOutput, now: float) -> None:
        bs, be = self.block_span()
        todo = self.todo  # logits row j belongs to sequence index todo[j]
        if self.mode == "refresh":
            # keep keys/values of the prompt and committed blocks (and, dual cache, of the
            # later blocks + suffix); each (1, H_kv, S, D)
            # copies: kept for the whole block, a view would pin the batch's key tensor
            if self.params.cache_suffix:
                keep = _without(out.kv, bs, be)
            else:
                keep = [(k[:, :, :bs].clone(), v[:, :, :bs].clone()) for k, v in out.kv]
            self.cached, self.n_prefix = keep, bs
        elif self.mode == "append":
            # the committed block's fresh keys join the prefix; the rest of the cache is kept
            a, n = self.appending, self.n_prefix
            past_len = out.kv[0][0].shape[2] - ((be if self.params.cache_suffix else self.x.numel()) - a)
            keep = []
            for (k, v), (ck, cv) in zip(out.kv, self.cached, strict=True):
                nk, nv = k[:, :, past_len : past_len + bs - a], v[:, :, past_len : past_len + bs - a]
                if self.params.cache_suffix:
                    later = slice(n + (be - bs), None)
                    keep.append((torch.cat([ck[:, :, :n], nk, ck[:, :, later]], 2),
                                 torch.cat([cv[:, :, :n], nv, cv[:, :, later]], 2)))
                else:
                    keep.append((torch.cat([ck, nk], 2), torch.cat([cv, nv], 2)))
            self.cached, self.n_prefix, self.appending = keep, bs, None
        logits = out.logits.masked_fill(self.banned, float("-inf"))  # (len(todo), V)

        if self.mode == "deadline":  # every mask left: its argmax
            p, tok = torch.softmax(logits, -1).max(-1)
            self._commit(todo, tok, p, now)
            self._finish_if_done(now, reason_if_done="deadline", force=True)
            return

        r = self.req
        tokens, token_probs, probs = choose_tokens(logits, r.temperature, r.top_k, r.top_p, self.generator)
        if self.schedule is None:
            self.schedule = transfer_schedule(todo.numel(), self.params.steps or self.params.block_length)
        if self.params.remasking == "threshold" and self.params.steps is None:
            k_min = 1
        elif self.step_in_block < len(self.schedule):
            k_min = self.schedule[self.step_in_block]
        else:
            k_min = todo.numel()
        scores = commit_order_scores(self.params.remasking, token_probs, probs, self.generator)
        pick = select_commits(self.params.remasking, scores, token_probs, self.params.threshold, k_min)
        self._commit(todo[pick], tokens[pick], token_probs[pick], now)
        self.step_in_block += 1
        block_done = bool(self.committed[bs - self.Lp : be - self.Lp].all())
        if block_done:
            self.block += 1
            self.step_in_block, self.schedule = 0, None
            if self.params.cache_refresh == "append" and self.cached is not None:
                self.appending = bs  # the next step appends this block's keys to the cache
            else:
                self.cached = None  # the next step refreshes the whole cache
        if not self._finish_if_done(now) and block_done:
            self.stream()

    def _commit(self, seq_idx: torch.Tensor, tokens: torch.Tensor, probs: torch.Tensor, now: float) -> None:
        if seq_idx.numel() and self.stats.time_to_first_commit_s == 0.0:
            self.stats.time_to_first_commit_s = now - self.t_submit
        self.x[seq_idx] = tokens
        self.committed[seq_idx - self.Lp] = True
        self.logp[seq_idx - self.Lp] = torch.log(probs.clamp_min(1e-30))
        for i, t in zip((seq_idx - self.Lp).tolist(), tokens.tolist(), strict=True):
            if i < self.limit and (t in self.eos_ids or self._has_stop(t)):
                self.limit = i + 1  # this token is part of the output's end; what follows is not

    def _has_stop(self, token: int) -> bool:
        if not self.req.stop:
            return False
        text = self.info.tokenizer.decode([token], skip_special_tokens=False)
        return any(s and s in text for s in self.req.stop)

    def _finish_if_done(self, now: float, reason_if_done: str = "length", force: bool = False) -> bool:
        """Update the output; finish when the text can no longer change. True if finished."""
        uncommitted = (~self.committed).nonzero()
        frontier = int(uncommitted[0]) if uncommitted.numel() else self.G  # canvas prefix that is final
        final = self.x[self.Lp : self.Lp + frontier].tolist()
        end = next((i for i, t in enumerate(final) if t in self.eos_ids), None)
        if end is not None:
            final = final[:end]
        scored = frontier if end is None else end + 1  # the output and its end token
        if scored:
            self.stats.mean_token_logprob = float(self.logp[:scored].mean())
        if self.set_output(final, now):
            self.finish("stop", now)
        elif force:
            self.finish(reason_if_done, now)
        elif end is not None:
            self.finish("stop", now)
        elif frontier == self.G:
            self.finish("length", now)
        return self.finished is not None


def _without(kv: list, lo: int, hi: int) -> list:
    """Per layer (k, v) with the keys/values at [lo, hi) left out (a new tensor, not a view)."""
    return [(torch.cat([k[:, :, :lo], k[:, :, hi:]], 2), torch.cat([v[:, :, :lo], v[:, :, hi:]], 2)) for k, v in kv]
