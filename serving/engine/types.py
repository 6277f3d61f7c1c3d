"""The engine's contract with its callers (the HTTP API, eval, benchmarks).

Threading model: `Engine.start()` runs the scheduler on its own thread. `Engine.submit(req,
on_event)` is thread-safe and returns at once; the scheduler thread calls `on_event` with
`Delta` events (only when `req.stream`) and exactly one final `Finished` event. Callers on an
asyncio loop wrap `on_event` with `loop.call_soon_threadsafe`. `Engine.cancel(request_id)` frees
the request's slot at the next tick (its `Finished` has finish_reason "cancelled").
`Engine.generate(req)` is the blocking convenience for eval and scripts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Remasking = Literal["threshold", "low_confidence", "entropy", "random"]
FinishReason = Literal["stop", "length", "deadline", "cancelled", "error"]


class EngineFull(RuntimeError):
    """Admission refused: running slots and the waiting queue are full (→ HTTP 503 + Retry-After)."""


class PromptTooLong(ValueError):
    """Prompt (+ suffix + max_tokens) does not fit the model's context (→ HTTP 400)."""

    user_error = True


@dataclass
class DLMParams:
    block_length: int = 32  # tokens per semi-autoregressive block
    steps: int | None = None  # fixed denoising steps per block (None: as many as the policy needs)
    threshold: float = 0.9  # confidence threshold τ for remasking="threshold"
    remasking: Remasking = "threshold"  # commit policy
    use_cache: bool = True  # prefix KV cache (prompt + committed blocks)
    cache_suffix: bool = False  # also cache the suffix's KV for infilling (approximation)
    # at a block start, "full" recomputes the whole sequence (Fast-dLLM); "append" runs only the
    # block just committed (+ the new block) against the cache and appends its keys (cheaper,
    # a further approximation: cached keys are never recomputed)
    cache_refresh: Literal["full", "append"] = "full"


@dataclass
class GenerationRequest:
    prompt: str  # text before the generated span (the prefix when infilling)
    suffix: str | None = None  # text after the span: present → infill
    max_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    deadline_s: float | None = None  # t_max_predict_ms / 1000: DLM commits its argmax then
    stream: bool = False  # emit Delta events as text is committed
    dlm: DLMParams = field(default_factory=DLMParams)
    request_id: str = ""  # filled by submit() when empty


@dataclass
class RequestStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    forward_passes: int = 0
    queue_time_s: float = 0.0  # submit → first model step
    time_to_first_commit_s: float = 0.0  # submit → first committed token
    total_time_s: float = 0.0  # submit → finished
    mean_token_logprob: float = 0.0  # mean log-probability of the output tokens (and the end token)
    # when they were committed; DLM length search ranks candidate spans by it

    @property
    def tokens_per_forward(self) -> float:
        return self.completion_tokens / self.forward_passes if self.forward_passes else 0.0


@dataclass
class Delta:
    request_id: str
    text: str  # newly committed text (a block for the DLM, a token for AR)


@dataclass
class Finished:
    request_id: str
    text: str  # the whole completion (stop string and suffix excluded)
    finish_reason: FinishReason
    stats: RequestStats
    error: str | None = None
    stop_word: str = ""  # the stop string that ended it ("" when it ended otherwise)


class InvalidRequest(ValueError):
    """A request parameter outside what the engine can do (→ HTTP 400)."""

    user_error = True
