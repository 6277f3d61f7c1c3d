"""Wire formats of the HTTP API: pydantic models that carry the limits.

Three request shapes, one generation request underneath (`serving.engine.types.GenerationRequest`):
- OpenAI `POST /v1/completions` (`CompletionRequest`), with `suffix` for infilling.
- llama.cpp `POST /infill` (`InfillRequest`), as llama.vscode / llama.vim send it.
- Codestral / Continue `POST /v1/fim/completions` (`FIMRequest`).

Every shape also takes the DLM decoding knobs (`DLMKnobs`) as extra body fields; an AR model
ignores them. Unknown fields are ignored (editor plugins send many fields of their own), but a
known field with a bad value is a 400 with the field named.

Not handled (answered with a clear 400): `logprobs`, `best_of` other than `n`, `logit_bias`,
non-zero presence/frequency penalties, token-id prompts. `prompt` lists are capped at
`MAX_PROMPTS`, and `len(prompt) * n` at `MAX_CHOICES`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.engine.types import DLMParams

MAX_TOKENS = 4096  # hard cap on max_tokens / n_predict; the model's context usually binds first
MAX_TEXT_CHARS = 1_000_000  # per text field; the body-size limit normally binds first
MAX_STOP = 4  # stop sequences per request (OpenAI's limit)
MAX_STOP_CHARS = 128
MAX_N = 8  # choices per prompt
MAX_PROMPTS = 8  # prompts per /v1/completions request
MAX_CHOICES = 16  # prompts x n
MAX_EXTRA_CHUNKS = 64  # /infill input_extra entries
# Below these, sampling is greedy: logits / 1e-300 overflow to inf (softmax → NaN), and a top_p
# under float32's smallest subnormal rounds to 0 and would drop every token.
MIN_TEMPERATURE = 1e-3
MIN_TOP_P = 1e-6

Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
StopWord = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
StopList = Annotated[list[StopWord], Field(max_length=MAX_STOP)]


class UnsupportedOption(ValueError):
    """A well-formed option this server does not implement (→ 400 naming the option)."""

    user_error = True

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def sampling(temperature: float, top_p: float) -> tuple[float, float]:
    """(temperature, top_p) for the engine: greedy (0, 1) when either is below its minimum."""
    if temperature < MIN_TEMPERATURE or top_p < MIN_TOP_P:
        return 0.0, 1.0
    return temperature, top_p


def _stop_list(v: str | list[str] | None) -> list[str]:
    if v is None:
        return []
    return [v] if isinstance(v, str) else list(v)


class DLMKnobs(BaseModel):
    """Masked-diffusion decoding knobs (extra body fields; ignored by AR models).

    Left unset, the engine's defaults apply (`serving.engine.types.DLMParams`).
    """

    model_config = ConfigDict(extra="ignore")

    block_length: int | None = Field(
        None, ge=1, le=1024,
        description="DLM: tokens per semi-autoregressive block (default 32).")
    steps: int | None = Field(
        None, ge=1, le=MAX_TOKENS,
        description="DLM: denoising steps per block (default: as many as the remasking policy needs).")
    threshold: float | None = Field(
        None, gt=0.0, le=1.0,
        description="DLM: confidence threshold for remasking='threshold' (default 0.9); "
                    "lower commits more tokens per step (faster, riskier).")
    remasking: Literal["threshold", "low_confidence", "entropy", "random"] | None = Field(
        None, description="DLM: which masked positions are committed at each step (default 'threshold').")
    cache: Literal["none", "prefix", "dual"] | None = Field(
        None, description="DLM: KV cache between steps: 'none' (exact, slowest), 'prefix' (prompt and "
                          "committed blocks; default) or 'dual' (also the suffix; fastest, approximate).")
    cache_refresh: Literal["full", "append"] | None = Field(
        None, description="DLM: at each block start, 'full' recomputes the whole sequence's cache (default); "
                          "'append' computes only the block just committed (cheaper, more approximate).")

    @model_validator(mode="after")
    def _threshold_needs_threshold_policy(self):
        if self.threshold is not None and self.remasking not in (None, "threshold"):
            raise ValueError(f"threshold applies only to remasking='threshold', not {self.remasking!r}")
        return self

    def dlm_params(self) -> DLMParams:
        p = DLMParams()
        if self.block_length is not None:
            p.block_length = self.block_length
        if self.steps is not None:
            p.steps = self.steps
        if self.threshold is not None:
            p.threshold = self.threshold
        if self.remasking is not None:
            p.remasking = self.remasking
        if self.cache is not None:
            p.use_cache, p.cache_suffix = self.cache != "none", self.cache == "dual"
        if self.cache_refresh is not None:
            p.cache_refresh = self.cache_refresh
        return p


# ------------------------------------------------------------------ OpenAI /v1/completions


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionRequest(DLMKnobs):
    """OpenAI legacy completions (`POST /v1/completions`); `suffix` turns it into an infill."""

    model: str | None = Field(None, max_length=256, description="Must name the served model when given.")
    prompt: Text | list[Text] = Field(
        ..., description="Text before the completion; a list asks for one completion per prompt.")
    suffix: Text | None = Field(None, description="Text after the completion: the request becomes an infill.")
    max_tokens: int = Field(16, ge=1, le=MAX_TOKENS)
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 (or below 1e-3) = greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=1_000_000, description="Extension (as vLLM): 0 = off.")
    n: int = Field(1, ge=1, le=MAX_N)
    stop: StopWord | StopList | None = Field(None, description=f"Up to {MAX_STOP} stop sequences.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5, description="Not supported: any value is a 400.")
    best_of: int | None = Field(None, ge=1, le=MAX_N, description="Only best_of == n is supported.")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="Only 0 is supported.")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="Only 0 is supported.")
    logit_bias: dict[str, float] | None = Field(None, description="Not supported unless empty.")
    user: str | None = Field(None, max_length=256)

    @field_validator("prompt")
    @classmethod
    def _prompt_list_bounds(cls, v):
        if isinstance(v, list) and not 1 <= len(v) <= MAX_PROMPTS:
            raise ValueError(f"a prompt list holds 1 to {MAX_PROMPTS} strings")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if self.echo and self.suffix is not None:
            raise ValueError("echo cannot be combined with suffix")
        if len(self.prompts) * self.n > MAX_CHOICES:
            raise ValueError(f"len(prompt) * n must be at most {MAX_CHOICES}")
        for p in self.prompts:
            if not p and not self.suffix:
                raise ValueError("prompt must not be empty (unless a suffix is given)")
        return self

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def stop_list(self) -> list[str]:
        return _stop_list(self.stop)

    def check_supported(self) -> None:
        """Raise UnsupportedOption for options that parse but that this server does not implement."""
        if self.logprobs is not None:
            raise UnsupportedOption("logprobs", "logprobs is not supported by this server")
        if self.best_of is not None and self.best_of != self.n:
            raise UnsupportedOption("best_of", "best_of is supported only when equal to n")
        if self.presence_penalty or self.frequency_penalty:
            raise UnsupportedOption("presence_penalty", "presence/frequency penalties are not supported")
        if self.logit_bias:
            raise UnsupportedOption("logit_bias", "logit_bias is not supported")


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "dcoder"
    max_model_len: int
    objective: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ------------------------------------------------------------- Codestral /v1/fim/completions


class FIMRequest(DLMKnobs):
    """Codestral-style fill-in-the-middle (`POST /v1/fim/completions`), as Continue sends it."""

    model: str | None = Field(None, max_length=256, description="Must name the served model when given.")
    prompt: Text = Field(..., description="Code before the cursor.")
    suffix: Text = Field("", description="Code after the cursor.")
    max_tokens: int = Field(64, ge=1, le=MAX_TOKENS)
    min_tokens: int | None = Field(None, ge=0, le=0, description="Only 0 is supported.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 (or below 1e-3) = greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: StopWord | StopList | None = None
    stream: bool = False
    random_seed: int | None = Field(None, ge=0, le=2**63 - 1)

    @model_validator(mode="after")
    def _not_empty(self):
        if not self.prompt and not self.suffix:
            raise ValueError("prompt and suffix are both empty")
        return self

    @property
    def stop_list(self) -> list[str]:
        return _stop_list(self.stop)


class FIMMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class FIMChoice(BaseModel):
    index: int
    message: FIMMessage
    finish_reason: Literal["stop", "length"]


class FIMResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[FIMChoice]
    usage: Usage


# ----------------------------------------------------------------------- llama.cpp /infill


class ExtraChunk(BaseModel):
    """One piece of repository context (another file, or a snippet of one)."""

    model_config = ConfigDict(extra="ignore")

    filename: str = Field("", max_length=1024)
    text: Text = ""


class InfillRequest(DLMKnobs):
    """llama.cpp's `POST /infill`, as llama.vscode / llama.vim send it.

    The text before the cursor is `input_prefix + prompt` (llama.vscode puts the cursor line's
    start in `prompt`). `input_extra` chunks are prepended as repository context. When everything
    does not fit the context, the server drops extra chunks first, then trims the prefix from the
    left and the suffix from the right, and says `truncated: true` (as llama.cpp does).
    `cache_prompt`, `samplers`, `n_indent`, `t_max_prompt_ms` and other llama.cpp fields are
    accepted and ignored.
    """

    input_prefix: Text = ""
    input_suffix: Text = ""
    input_extra: list[ExtraChunk] = Field(default_factory=list, max_length=MAX_EXTRA_CHUNKS)
    prompt: Text = ""
    n_predict: int = Field(-1, ge=-1, le=MAX_TOKENS, description="-1 = up to the server's default.")
    temperature: float = Field(0.8, ge=-10.0, le=10.0, description="Below 1e-3 (or <= 0) = greedy.")
    top_k: int = Field(40, ge=0, le=1_000_000, description="0 = off.")
    top_p: float = Field(0.95, ge=0.0, le=1.0, description="0 = greedy.")
    stop: StopList = Field(default_factory=list)
    stream: bool = False
    seed: int = Field(-1, ge=-1, le=2**63 - 1, description="-1 = random.")
    t_max_predict_ms: int = Field(0, ge=0, le=600_000, description="Generation time limit; 0 = none.")
    cache_prompt: bool = Field(True, description="Accepted for compatibility; the engine decides.")

    @field_validator("n_predict")
    @classmethod
    def _n_predict_not_zero(cls, v):
        if v == 0:
            raise ValueError("n_predict must be -1 or positive")
        return v

    @model_validator(mode="after")
    def _not_empty(self):
        if not (self.input_prefix or self.input_suffix or self.prompt):
            raise ValueError("input_prefix, prompt and input_suffix are all empty")
        return self


class InfillTimings(BaseModel):
    prompt_n: int
    prompt_ms: float
    predicted_n: int
    predicted_ms: float
    predicted_per_token_ms: float
    predicted_per_second: float


class InfillResponse(BaseModel):
    content: str
    stop: bool = True
    stop_type: Literal["eos", "limit", "word", "none"]
    stopping_word: str = ""
    tokens_predicted: int
    tokens_evaluated: int
    truncated: bool
    timings: InfillTimings
    model: str
