"""OpenAI-shaped routes: `POST /v1/completions`, `GET /v1/models`, `POST /v1/fim/completions`.

Streaming answers are SSE (`data: {json}` lines) terminated by `data: [DONE]`. An error after
the stream has started is sent as one `data: {"error": ...}` event before `[DONE]`.
n > 1 runs n engine requests (seeds `seed + j` when a seed is given, so choices differ).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from serving.api.common import (
    SSE_HEADERS,
    check_model,
    get_engine,
    new_id,
    now,
    openai_finish_reason,
    sse,
    sse_error,
)
from serving.api.generation import ClientDisconnected, Generation, cancel_on_disconnect, submit_all
from serving.api.security import require_api_key
from serving.engine.types import Delta, Finished, GenerationRequest
from serving.protocol import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    FIMChoice,
    FIMMessage,
    FIMRequest,
    FIMResponse,
    ModelCard,
    ModelList,
    Usage,
    sampling,
)

log = logging.getLogger("dcoder.serve")
router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], tags=["openai"])

_ERRORS = {400: {"description": "Invalid or unsupported request"}, 401: {"description": "Bad API key"},
           404: {"description": "Unknown model"}, 413: {"description": "Body too large"},
           503: {"description": "Loading or at capacity (see Retry-After)"}}


def _timeout(request: Request) -> float:
    return request.app.state.settings.request_timeout_s


def _grace(request: Request) -> float:
    # The engine's deadline finishes a request gracefully; the grace covers queueing and the last step.
    return _timeout(request) + request.app.state.settings.timeout_grace_s


@router.get("/models", response_model=ModelList)
async def list_models(engine=Depends(get_engine)) -> ModelList:
    return ModelList(data=[ModelCard(id=engine.model_name, created=now(), max_model_len=engine.max_context,
                                     objective=engine.objective)])


def _completion_requests(body: CompletionRequest, timeout_s: float) -> list[GenerationRequest]:
    reqs = []
    temperature, top_p = sampling(body.temperature, body.top_p)
    for prompt in body.prompts:
        for j in range(body.n):
            reqs.append(GenerationRequest(
                prompt=prompt, suffix=body.suffix, max_tokens=body.max_tokens,
                temperature=temperature, top_p=top_p, top_k=body.top_k, stop=body.stop_list,
                seed=None if body.seed is None else (body.seed + j) % 2**63,
                deadline_s=timeout_s, stream=body.stream, dlm=body.dlm_params()))
    return reqs


def _usage(results: list[Finished], n: int) -> Usage:
    prompt = sum(f.stats.prompt_tokens for i, f in enumerate(results) if i % n == 0)
    completion = sum(f.stats.completion_tokens for f in results)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


@router.post("/completions", response_model=CompletionResponse, responses={
    200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE when stream is true"},
    **_ERRORS})
async def completions(body: CompletionRequest, request: Request, engine=Depends(get_engine)):
    """OpenAI completions; `suffix` makes it an infill. DLM knobs are extra body fields."""
    body.check_supported()
    model = check_model(engine, body.model)
    gen = await submit_all(engine, request.app.state.metrics, _completion_requests(body, _timeout(request)),
                           _grace(request))
    rid, created = new_id("cmpl"), now()
    if body.stream:
        return StreamingResponse(_stream_completion(gen, body, rid, created, model),
                                 media_type="text/event-stream", headers=SSE_HEADERS,
                                 background=BackgroundTask(gen.cancel_unfinished))
    try:
        results = await cancel_on_disconnect(request, gen.results())
    except ClientDisconnected:
        return Response(status_code=499)
    prompts = body.prompts
    choices = [CompletionChoice(index=i, text=(prompts[i // body.n] if body.echo else "") + f.text,
                                finish_reason=openai_finish_reason(f)) for i, f in enumerate(results)]
    return CompletionResponse(id=rid, created=created, model=model, choices=choices,
                              usage=_usage(results, body.n))


async def _stream_completion(gen: Generation, body: CompletionRequest, rid: str, created: int,
                             model: str) -> AsyncIterator[str]:
    def chunk(index: int, text: str, finish: str | None = None) -> str:
        return sse({"id": rid, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}]})

    n_choices = len(gen.request_ids)
    sent = [""] * n_choices
    results: list[Finished | None] = [None] * n_choices
    try:
        if body.echo:
            for i in range(n_choices):
                yield chunk(i, body.prompts[i // body.n])
        async for i, event in gen.events():
            if isinstance(event, Delta):
                sent[i] += event.text
                yield chunk(i, event.text)
            else:
                results[i] = event
                # Deltas may hold back nothing or everything; send what the final text adds.
                rest = event.text[len(sent[i]):] if event.text.startswith(sent[i]) else ""
                yield chunk(i, rest, openai_finish_reason(event))
        if body.stream_options and body.stream_options.include_usage:
            usage = _usage(results, body.n)  # type: ignore[arg-type]
            yield sse({"id": rid, "object": "text_completion", "created": created, "model": model,
                       "choices": [], "usage": usage.model_dump()})
    except Exception as e:  # the status line is gone: report in-band
        if not isinstance(e, ClientDisconnected):
            log.warning("stream %s ended with %s", rid, type(e).__name__)
        yield sse_error(e)
    yield sse("[DONE]")


@router.post("/fim/completions", response_model=FIMResponse, responses={
    200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE when stream is true"},
    **_ERRORS})
async def fim_completions(body: FIMRequest, request: Request, engine=Depends(get_engine)):
    """Codestral-style FIM (Continue): `prompt` before the cursor, `suffix` after it."""
    model = check_model(engine, body.model)
    temperature, top_p = sampling(body.temperature, body.top_p)
    req = GenerationRequest(prompt=body.prompt, suffix=body.suffix, max_tokens=body.max_tokens,
                            temperature=temperature, top_p=top_p, stop=body.stop_list,
                            seed=body.random_seed, deadline_s=_timeout(request), stream=body.stream,
                            dlm=body.dlm_params())
    gen = await submit_all(engine, request.app.state.metrics, [req], _grace(request))
    rid, created = new_id("fim"), now()
    if body.stream:
        return StreamingResponse(_stream_fim(gen, rid, created, model), media_type="text/event-stream",
                                 headers=SSE_HEADERS, background=BackgroundTask(gen.cancel_unfinished))
    try:
        (f,) = await cancel_on_disconnect(request, gen.results())
    except ClientDisconnected:
        return Response(status_code=499)
    return FIMResponse(id=rid, created=created, model=model,
                       choices=[FIMChoice(index=0, message=FIMMessage(content=f.text),
                                          finish_reason=openai_finish_reason(f))],
                       usage=_usage([f], 1))


async def _stream_fim(gen: Generation, rid: str, created: int, model: str) -> AsyncIterator[str]:
    def chunk(delta: dict, finish: str | None = None, usage: Usage | None = None) -> str:
        payload = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage is not None:
            payload["usage"] = usage.model_dump()
        return sse(payload)

    sent = ""
    try:
        yield chunk({"role": "assistant", "content": ""})
        async for _, event in gen.events():
            if isinstance(event, Delta):
                sent += event.text
                yield chunk({"content": event.text})
            else:
                rest = event.text[len(sent):] if event.text.startswith(sent) else ""
                yield chunk({"content": rest}, openai_finish_reason(event), _usage([event], 1))
    except Exception as e:
        log.warning("stream %s ended with %s", rid, type(e).__name__)
        yield sse_error(e)
    yield sse("[DONE]")
