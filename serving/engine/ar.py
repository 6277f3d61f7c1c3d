"""Autoregressive decoding with a KV cache: one prefill step, then one token per step."""

from __future__ import annotations

import torch

from data_prep.format import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, MASK, PAD
from serving.engine.batch import StepInput, StepOutput
from serving.engine.kvpool import KVPool
from serving.engine.sampling import choose_tokens
from serving.engine.slot import EventSink, ModelInfo, Slot
from serving.engine.types import GenerationRequest


class ARSlot(Slot):
    """Stops at `<|endoftext|>`, a stop string, `max_tokens` or the deadline (text so far).

    After the prefill, the request's keys live in the engine's `KVPool` (row `kv_row`) and every
    decode step is a `pooled` row: the engine runs all of them as one forward over the pool.
    """

    def __init__(self, req: GenerationRequest, info: ModelInfo, on_event: EventSink, t_submit: float,
                 context: list[int], pool: KVPool):
        super().__init__(req, info, on_event, t_submit, prompt_tokens=len(context))
        self.context = torch.tensor(context, dtype=torch.long, device=info.device)
        self.generated: list[int] = []
        self.pool = pool
        self.kv_row: int | None = None  # row in the pool once prefilled
        self.prefilled = False
        self.logprob_sum = 0.0
        # tokens an AR model must never emit (they mean nothing to it as output)
        self.banned = self.banned_logits_mask([MASK, PAD, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE])

    def prepare(self, now: float) -> StepInput | None:
        if self.deadline_passed(now):
            self.finish("deadline", now)
            return None
        if not self.prefilled:  # prefill: the whole context, causally
            n = self.context.numel()
            return StepInput(self.context, torch.arange(n, device=self.context.device), causal=True,
                             want_kv=True, logits_idx=torch.tensor([n - 1], device=self.context.device))
        pos = self.context.numel() + len(self.generated) - 1
        return StepInput(torch.tensor([self.generated[-1]], device=self.context.device),
                         torch.tensor([pos], device=self.context.device), causal=True, pooled=True)

    def advance(self, out: StepOutput, now: float) -> None:
        if not self.prefilled:
            self.pool.add(self, out.kv)
            self.prefilled = True
        logits = out.logits[-1:].masked_fill(self.banned, float("-inf"))  # (1, V)
        r = self.req
        tokens, probs, _ = choose_tokens(logits, r.temperature, r.top_k, r.top_p, self.generator)
        tok = int(tokens[0])
        self.logprob_sum += float(torch.log(probs[0]))
        self.stats.mean_token_logprob = self.logprob_sum / (len(self.generated) + 1)
        if tok in self.eos_ids:
            self.finish("stop", now)
            return
        self.generated.append(tok)
        if self.set_output(self.generated, now):
            self.finish("stop", now)
        elif len(self.generated) >= r.max_tokens:
            self.finish("length", now)
        else:
            self.stream()

    def finish(self, reason, now: float, error: str | None = None) -> None:
        self.pool.remove(self)  # before the event: the row is free when the caller hears of it
        super().finish(reason, now, error)
