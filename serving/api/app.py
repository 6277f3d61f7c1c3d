"""The app factory: `create_app(settings)` builds a FastAPI app whose lifespan loads the model.

Loading runs on a worker thread after the server is up, so `/health` answers 503 while loading
and 200 once the engine's scheduler thread runs; every generation route answers 503 with
`Retry-After` until then. Middleware order (outermost first): request counter, CORS (only when
origins are given), body-size limit. Exception handlers are registered once, in `errors.py`.

    uvicorn: see `serving/cli.py` (`dcoder serve MODEL_DIR`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI

from serving.api import routes_llama, routes_openai, routes_ops
from serving.api.errors import register_exception_handlers
from serving.api.metrics import Metrics
from serving.api.middleware import BodyLimit, RequestCounter

log = logging.getLogger("dcoder.serve")


@dataclass
class ServerSettings:
    model_path: str = ""  # model dir (export) or run dir (latest checkpoint)
    api_key: str | None = None  # required on /v1/* and /infill when set
    max_batch: int = 8  # engine slots advanced together per scheduler tick
    max_queue: int = 64  # requests waiting for a slot; beyond it → 503 + Retry-After
    cors_origins: list[str] = field(default_factory=list)  # empty: no CORS headers at all
    device: str = "cpu"
    dtype: str | None = None  # None: the engine's default for the device
    request_timeout_s: float = 60.0  # engine deadline per request (a graceful "length" finish)
    timeout_grace_s: float = 5.0  # after deadline + grace the request is cancelled → 504
    max_body_bytes: int = 2 * 1024 * 1024
    retry_after_s: int = 1  # Retry-After on 503s
    default_n_predict: int = 64  # /infill with n_predict = -1


def create_app(settings: ServerSettings, engine_factory: Callable[[], object] | None = None) -> FastAPI:
    """Build the app. `engine_factory` (default: `Engine.from_path(settings.model_path, ...)`) runs
    on a thread during startup; its engine is started, and shut down with the app."""

    def load_engine():
        if engine_factory is not None:
            return engine_factory()
        import torch

        from serving.engine import Engine

        dtype = getattr(torch, settings.dtype) if settings.dtype else None
        return Engine.from_path(settings.model_path, device=settings.device, dtype=dtype,
                                max_batch=settings.max_batch, max_queue=settings.max_queue)

    def load_and_start(app: FastAPI) -> None:
        try:
            engine = load_engine()
            engine.start()
        except Exception as e:
            app.state.load_error = f"{type(e).__name__}: {e}"
            log.exception("model failed to load")
            return
        app.state.engine = engine
        log.info("serving %s (%s, context %d)", engine.model_name, engine.objective, engine.max_context)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = asyncio.create_task(asyncio.to_thread(load_and_start, app))
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                await loader  # a thread cannot be interrupted: let the load finish, then stop it
            if app.state.engine is not None:
                await asyncio.to_thread(app.state.engine.shutdown)
                app.state.engine = None

    app = FastAPI(title="dcoder", version="0.1.0", lifespan=lifespan,
                  description="Code completion and infilling with a masked-diffusion (or AR) code model. "
                              "OpenAI /v1/completions, llama.cpp /infill, Codestral /v1/fim/completions.")
    app.state.settings = settings
    app.state.engine = None
    app.state.load_error = None
    app.state.api_key = settings.api_key.encode("utf-8") if settings.api_key else None
    app.state.metrics = Metrics(lambda: app.state.engine)
    register_exception_handlers(app, settings.retry_after_s)
    app.include_router(routes_openai.router)
    app.include_router(routes_llama.router)
    app.include_router(routes_ops.router)

    # add_middleware wraps: the last added is the outermost.
    app.add_middleware(BodyLimit, max_body_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-Api-Key", "Content-Type"])
    app.add_middleware(RequestCounter, metrics=app.state.metrics,
                       known_paths=frozenset(getattr(r, "path", "") for r in app.routes))
    return app
