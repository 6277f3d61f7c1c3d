"""Where completions come from: the in-process serving engine, or any OpenAI-compatible server.

Both take a list of `GenerationRequest`s and return the completion texts in order. Stop strings
are also applied here (`truncate_at_stop`), so a server that ignores or caps them (OpenAI allows
four) is scored the same way as the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from serving.engine.types import DLMParams, GenerationRequest


class BackendError(RuntimeError):
    user_error = True


class Backend(Protocol):
    name: str

    def generate(self, reqs: list[GenerationRequest], on_done: Callable[[int], None] | None = None) -> list[str]: ...

    def close(self) -> None: ...


def truncate_at_stop(text: str, stop: list[str]) -> str:
    """Cut `text` at the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


class EngineBackend:
    """`serving.engine.Engine` on a model dir or run dir, in this process."""

    def __init__(self, path: str, *, device: str = "cpu", max_batch: int = 8, engine=None):
        from serving.engine import Engine

        self.engine = engine or Engine.from_path(path, device=device, max_batch=max_batch,
                                                 max_queue=max(64, 4 * max_batch))
        self.name = self.engine.model_name
        self.objective = self.engine.objective
        self.engine.start()

    def fit(self, req: GenerationRequest) -> GenerationRequest:
        """Cut a prompt that does not fit the context: the prefix from the left, the suffix from the
        right (keeping the text next to the completion); max_tokens to at most half the context.
        Tiny models (a 128-token context) can then still be scored on HumanEval-sized prompts."""
        import dataclasses

        ctx, tok = self.engine.max_context, self.engine.tokenizer
        max_tokens = min(req.max_tokens, max(1, ctx // 2))
        budget = ctx - max_tokens - 4  # <|endoftext|> and the FIM markers
        prompt, suffix = tok.encode(req.prompt).ids, tok.encode(req.suffix).ids if req.suffix else []
        if len(prompt) + len(suffix) <= budget and max_tokens == req.max_tokens:
            return req
        keep_suffix = min(len(suffix), budget // 2) if suffix else 0
        while True:
            keep_prompt = max(1, budget - keep_suffix)
            p = tok.decode(prompt[-keep_prompt:])
            s = tok.decode(suffix[:keep_suffix]) if req.suffix is not None else None
            # decode → re-encode may change the count: shrink until it really fits
            if self.engine.count_tokens(p) + (self.engine.count_tokens(s) if s else 0) <= budget or budget < 2:
                return dataclasses.replace(req, prompt=p, suffix=s, max_tokens=max_tokens)
            budget -= 2

    def generate(self, reqs: list[GenerationRequest], on_done: Callable[[int], None] | None = None) -> list[str]:
        out: list[str] = []
        # Chunks no larger than the queue so submit() never refuses; the engine batches inside.
        chunk = 32
        for i in range(0, len(reqs), chunk):
            for f in self.engine.generate_batch([self.fit(r) for r in reqs[i : i + chunk]]):
                if f.finish_reason == "error":
                    raise BackendError(f"engine error: {f.error}")
                out.append(f.text)
                if on_done:
                    on_done(len(out))
        return [truncate_at_stop(t, r.stop) for t, r in zip(out, reqs, strict=True)]

    def close(self) -> None:
        self.engine.shutdown()


class HttpBackend:
    """`POST {base_url}/v1/completions` (dcoder serve, vLLM, ...), `concurrency` requests in flight."""

    def __init__(self, base_url: str, *, model: str | None = None, api_key: str | None = None,
                 concurrency: int = 8, timeout_s: float = 600.0):
        import httpx

        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[:-3]
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)
        self.concurrency = concurrency
        self.name = model or self._first_model()
        self.objective = "unknown"
        self.too_long = 0  # prompts the server refused as longer than its context

    def _first_model(self) -> str:
        import httpx

        try:
            r = self.client.get("/v1/models")
            r.raise_for_status()
            return r.json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
            raise BackendError(f"{self.base_url}/v1/models: no model listed ({type(e).__name__}: {e})") from None

    def _one(self, req: GenerationRequest) -> str:
        import httpx

        body = {"model": self.name, "prompt": req.prompt, "max_tokens": req.max_tokens,
                "temperature": req.temperature, "top_p": req.top_p, "stop": req.stop[:4] or None}
        if req.suffix is not None:
            body["suffix"] = req.suffix
        if req.seed is not None:
            body["seed"] = req.seed
        # DLM knobs travel as extra body fields (dcoder serve reads them, other servers ignore them).
        default = DLMParams()
        for knob in ("block_length", "steps", "threshold", "remasking"):
            if getattr(req.dlm, knob) != getattr(default, knob):
                body[knob] = getattr(req.dlm, knob)
        try:
            r = self.client.post("/v1/completions", json=body)
        except httpx.HTTPError as e:
            raise BackendError(f"{self.base_url}/v1/completions: {type(e).__name__}: {e}") from None
        if r.status_code == 400 and "context" in r.text:
            self.too_long += 1  # the server's model cannot take this prompt: scored as a failure
            return ""
        if r.status_code != 200:
            raise BackendError(f"{self.base_url}/v1/completions: HTTP {r.status_code}: {r.text[:200]}")
        return truncate_at_stop(r.json()["choices"][0]["text"], req.stop)

    def generate(self, reqs: list[GenerationRequest], on_done: Callable[[int], None] | None = None) -> list[str]:
        done = 0

        def one(req: GenerationRequest) -> str:
            nonlocal done
            text = self._one(req)
            done += 1
            if on_done:
                on_done(done)
            return text

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, reqs))

    def close(self) -> None:
        self.client.close()


def make_backend(model: str, *, device: str = "cpu", max_batch: int = 8, api_key: str | None = None,
                 served_model: str | None = None) -> Backend:
    """An HTTP backend for http(s):// URLs, else the in-process engine on a model or run dir."""
    if model.startswith(("http://", "https://")):
        return HttpBackend(model, model=served_model, api_key=api_key)
    return EngineBackend(model, device=device, max_batch=max_batch)
