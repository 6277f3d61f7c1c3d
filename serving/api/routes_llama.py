"""llama.cpp's `POST /infill`, the route llama.vscode and llama.vim call.

Prompt layout: repository context (`input_extra`, each chunk as `# filename` + text, separated by
`<|endoftext|>` as documents are in training) + `input_prefix` + `prompt` before the span,
`input_suffix` after it. Too much context is trimmed to fit (extra first, then the prefix's
left end, then the suffix's right end), as llama.cpp does, and reported as `truncated`.

Timings: this engine does not split prompt processing from generation; `prompt_ms` is the
time from submit to the first model step and `predicted_ms` the rest.
Streaming follows llama.cpp: `data: {"content": ..., "stop": false}` events, then a final event
with `stop: true` and the full response fields (no `[DONE]`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from data_prep.format import EOS
from serving.api.common import SSE_HEADERS, get_engine, sse, sse_error
from serving.api.errors import APIError
from serving.api.generation import ClientDisconnected, Generation, cancel_on_disconnect, submit_all
from serving.api.security import require_api_key
from serving.engine.types import Delta, Finished, GenerationRequest, PromptTooLong
from serving.protocol import InfillRequest, InfillResponse, InfillTimings, sampling

log = logging.getLogger("dcoder.serve")
router = APIRouter(dependencies=[Depends(require_api_key)], tags=["llama.cpp"])

RESERVED_TOKENS = 8  # special tokens the engine's infill layout may add around prefix and suffix


def _fit(engine, body: InfillRequest, n_predict: int, shrink: float) -> tuple[str, str, bool]:
    """(prefix, suffix, truncated) within the context budget; runs off the event loop."""
    tok = engine.tokenizer
    budget = int((engine.max_context - n_predict - RESERVED_TOKENS) * shrink)
    if budget <= 0:
        raise APIError(400, f"n_predict {n_predict} leaves no room for context "
                            f"(model context is {engine.max_context} tokens)", param="n_predict")
    extra = "".join(f"# {c.filename}\n{c.text}{EOS}" for c in body.input_extra if c.text)
    pre = tok.encode(body.input_prefix + body.prompt, add_special_tokens=False).ids
    suf = tok.encode(body.input_suffix, add_special_tokens=False).ids
    ext = tok.encode(extra, add_special_tokens=False).ids if extra else []
    if len(pre) + len(suf) + len(ext) <= budget:
        return extra + body.input_prefix + body.prompt, body.input_suffix, False
    # The prefix matters most: the suffix gets at least a quarter of the budget if it needs it.
    suf_take = min(len(suf), max(budget // 4, budget - len(pre)))
    pre_take = min(len(pre), budget - suf_take)
    ext_take = budget - suf_take - pre_take
    prefix = tok.decode(pre[len(pre) - pre_take:]) if pre_take else ""
    if ext_take > 0 and ext:
        prefix = tok.decode(ext[-ext_take:], skip_special_tokens=False) + prefix
    suffix = tok.decode(suf[:suf_take]) if suf_take else ""
    return prefix, suffix, True


def _stop_type(f: Finished) -> str:
    if f.finish_reason in ("length", "deadline"):
        return "limit"
    return "word" if f.stop_word else "eos"


def _response(f: Finished, body: InfillRequest, truncated: bool, model: str) -> InfillResponse:
    s = f.stats
    predicted_s = max(s.total_time_s - s.queue_time_s, 1e-9)
    return InfillResponse(
        content=f.text, stop_type=_stop_type(f), stopping_word=f.stop_word, tokens_predicted=s.completion_tokens,
        tokens_evaluated=s.prompt_tokens, truncated=truncated, model=model,
        timings=InfillTimings(
            prompt_n=s.prompt_tokens, prompt_ms=s.queue_time_s * 1000, predicted_n=s.completion_tokens,
            predicted_ms=predicted_s * 1000,
            predicted_per_token_ms=predicted_s * 1000 / max(s.completion_tokens, 1),
            predicted_per_second=s.completion_tokens / predicted_s))


@router.post("/infill", response_model=InfillResponse, responses={
    200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE when stream is true"},
    400: {"description": "Invalid request"}, 401: {"description": "Bad API key"},
    413: {"description": "Body too large"}, 503: {"description": "Loading or at capacity (see Retry-After)"}})
async def infill(body: InfillRequest, request: Request, engine=Depends(get_engine)):
    """llama.cpp infill: prefix/suffix/repository context in, `content` out."""
    settings = request.app.state.settings
    n_predict = body.n_predict if body.n_predict > 0 else min(settings.default_n_predict,
                                                               engine.max_context // 2)
    deadline = settings.request_timeout_s
    if body.t_max_predict_ms:
        deadline = min(deadline, body.t_max_predict_ms / 1000)
    temperature, top_p = sampling(body.temperature, body.top_p)
    loop = asyncio.get_running_loop()
    gen = None
    for shrink in (1.0, 0.75, 0.5):  # the engine's layout may need more room than RESERVED_TOKENS
        prefix, suffix, truncated = await loop.run_in_executor(None, _fit, engine, body, n_predict, shrink)
        req = GenerationRequest(
            prompt=prefix, suffix=suffix or None, max_tokens=n_predict,
            temperature=temperature, top_p=top_p,
            top_k=body.top_k, stop=list(body.stop), seed=None if body.seed < 0 else body.seed,
            deadline_s=deadline, stream=body.stream, dlm=body.dlm_params())
        try:
            gen = await submit_all(engine, request.app.state.metrics, [req],
                                   settings.request_timeout_s + settings.timeout_grace_s)
            break
        except PromptTooLong:
            if shrink == 0.5:
                raise
    assert gen is not None
    truncated = truncated or shrink < 1.0
    if body.stream:
        return StreamingResponse(_stream_infill(gen, body, truncated, engine.model_name),
                                 media_type="text/event-stream", headers=SSE_HEADERS,
                                 background=BackgroundTask(gen.cancel_unfinished))
    try:
        (f,) = await cancel_on_disconnect(request, gen.results())
    except ClientDisconnected:
        return Response(status_code=499)
    return _response(f, body, truncated, engine.model_name)


async def _stream_infill(gen: Generation, body: InfillRequest, truncated: bool,
                         model: str) -> AsyncIterator[str]:
    sent = ""
    try:
        async for _, event in gen.events():
            if isinstance(event, Delta):
                sent += event.text
                yield sse({"content": event.text, "stop": False})
            else:
                final = _response(event, body, truncated, model).model_dump()
                final["content"] = event.text[len(sent):] if event.text.startswith(sent) else ""
                yield sse(final)
    except Exception as e:
        log.warning("infill stream ended with %s", type(e).__name__)
        yield sse_error(e)
