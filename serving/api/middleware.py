"""Pure ASGI middleware (no BaseHTTPMiddleware: it would break streaming and disconnects).

`RequestCounter` (outermost) counts every answer by route template and status, 413s and 401s
included. `BodyLimit` reads the request body up to a byte limit before the app sees it and
answers 413 beyond it; afterwards `receive` goes back to the server, so the app still sees
`http.disconnect`.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.api.errors import error_body
from serving.api.metrics import Metrics


class RequestCounter:
    def __init__(self, app: ASGIApp, metrics: Metrics, known_paths: frozenset[str] = frozenset()):
        self.app, self.metrics, self.known_paths = app, metrics, known_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 499}  # stays 499 (client closed request) if no response starts

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            # Only route templates become labels: unknown paths must not grow the label set.
            label = getattr(route, "path", None)
            if label is None:  # answered before routing (e.g. 413): a known path is still a template
                label = scope["path"] if scope["path"] in self.known_paths else "other"
            self.metrics.requests.labels(route=label, status=str(status["code"])).inc()


class BodyLimit:
    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        if declared > self.max_body_bytes:
            return await self._too_large(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return await self._too_large(send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for http.disconnect

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        payload = json.dumps(error_body(413, f"request body exceeds {self.max_body_bytes} bytes")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
