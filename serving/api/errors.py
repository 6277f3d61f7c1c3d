"""One error shape for every route, and the exception handlers that produce it (registered once).

Body: `{"error": {"message", "type", "param", "code"}}` (OpenAI's shape; llama.cpp clients read
`error.message` too). Validation errors are 400 (as OpenAI and vLLM answer), never 422. Messages
name the field but never echo the request body.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.engine.types import EngineFull, InvalidRequest, PromptTooLong
from serving.protocol import UnsupportedOption

log = logging.getLogger("dcoder.serve")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 503: "overloaded_error",
          504: "timeout_error"}


class APIError(Exception):
    """An HTTP error with a message meant for the client."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error" if status >= 500
                                                              else "invalid_request_error"),
                      "param": param, "code": code if code is not None else status}}


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def overloaded(retry_after_s: int, message: str = "server is at capacity, retry shortly") -> APIError:
    return APIError(503, message, code="overloaded", headers={"Retry-After": str(retry_after_s)})


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts, first_param = [], None
    for err in exc.errors()[:3]:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        # pydantic names union members in the location (e.g. "str", "list[str]"); keep the field.
        loc = [x for x in loc if not x.startswith(("str", "list[", "function-", "int", "Annotated"))]
        param = ".".join(loc) or None
        first_param = first_param or param
        msg = err.get("msg", "invalid value")
        parts.append(f"{param}: {msg}" if param else msg)
    return "; ".join(parts) or "invalid request", first_param


def register_exception_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Map every exception the routes can raise to the one error shape."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(UnsupportedOption)
    async def _unsupported(request: Request, exc: UnsupportedOption):
        return error_response(400, str(exc), param=exc.param, code="unsupported_option")

    @app.exception_handler(PromptTooLong)
    async def _too_long(request: Request, exc: PromptTooLong):
        return error_response(400, str(exc) or "prompt does not fit the model's context",
                              code="context_length_exceeded")

    @app.exception_handler(InvalidRequest)
    async def _invalid(request: Request, exc: InvalidRequest):
        return error_response(400, str(exc))

    @app.exception_handler(EngineFull)
    async def _full(request: Request, exc: EngineFull):
        return error_response(503, "server is at capacity, retry shortly", code="overloaded",
                              headers={"Retry-After": str(retry_after_s)})

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        # The traceback goes to the log; the request body never does.
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error")
