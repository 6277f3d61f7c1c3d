"""Helpers shared by the routers: the engine dependency, model-name check, SSE framing."""

from __future__ import annotations

import json
import time
import uuid

from fastapi import Request

from serving.api.errors import APIError, error_body, overloaded
from serving.engine.types import Finished

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def get_engine(request: Request):
    """The ready engine, or a 503 (with Retry-After) while the model is loading."""
    state = request.app.state
    if state.engine is None:
        if state.load_error:
            raise APIError(503, "model failed to load; see the server log", code="load_failed")
        raise overloaded(state.settings.retry_after_s, "model is loading, retry shortly")
    return state.engine


def check_model(engine, requested: str | None) -> str:
    """Served name; a request naming another model is a 404 (OpenAI's answer)."""
    if requested is not None and requested != engine.model_name:
        raise APIError(404, f"model {requested!r} is not served here; GET /v1/models lists it",
                       param="model", code="model_not_found")
    return engine.model_name


def openai_finish_reason(f: Finished) -> str:
    """The engine's reasons in OpenAI's vocabulary: a deadline cut is 'length'."""
    return "stop" if f.finish_reason == "stop" else "length"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


def sse_error(exc: BaseException) -> str:
    if isinstance(exc, APIError):
        return sse(error_body(exc.status, exc.message, exc.param, exc.code))
    return sse(error_body(500, "internal server error"))
