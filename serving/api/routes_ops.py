"""Operational routes, open without a key: `GET /health`, `GET /metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

router = APIRouter(tags=["ops"])


@router.get("/health", responses={503: {"description": "Loading (or failed to load)"}})
async def health(request: Request) -> JSONResponse:
    """200 when the model is loaded and the engine runs; 503 (with Retry-After) before that."""
    state = request.app.state
    if state.engine is not None:
        return JSONResponse({"status": "ok", "model": state.engine.model_name})
    if state.load_error:
        return JSONResponse({"status": "error", "message": "model failed to load"}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503,
                        headers={"Retry-After": str(state.settings.retry_after_s)})


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition (names in the module docstring of serving.api.metrics)."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
