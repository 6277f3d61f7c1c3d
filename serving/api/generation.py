"""Bridge from the engine's scheduler thread to the event loop.

`submit_all` hands requests to the engine off the event loop (submit tokenizes) and returns a
`Generation`; its `events()` yields `(choice_index, Delta | Finished)` as the scheduler thread
reports them (via `loop.call_soon_threadsafe`). Leaving `events()` early (client disconnect,
timeout, an exception) cancels every unfinished engine request, which frees its slot at the
next scheduler tick. `cancel_on_disconnect` gives non-streaming handlers the same behaviour
(the idea of vLLM's `with_cancellation`). Streaming routes also pass `cancel_unfinished` as the
response's background task, which Starlette runs after a disconnect even when the stream never
started iterating.

Not handled: requests are never retried or re-queued after EngineFull; the client gets a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from fastapi import Request

from serving.api.errors import APIError
from serving.api.metrics import Metrics
from serving.engine.types import Delta, Finished, GenerationRequest

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client went away before the answer was ready."""


class Generation:
    def __init__(self, engine, metrics: Metrics, timeout_s: float, n: int):
        self.engine, self.metrics, self.timeout_s = engine, metrics, timeout_s
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Delta | Finished]] = asyncio.Queue()
        self.request_ids: list[str | None] = [None] * n
        self.finished: set[int] = set()

    def _callback(self, index: int):
        def on_event(event: Delta | Finished) -> None:  # runs on the scheduler thread
            with contextlib.suppress(RuntimeError):  # loop already closed (server shutting down)
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))
        return on_event

    async def _submit(self, index: int, req: GenerationRequest) -> None:
        fut = self.loop.run_in_executor(None, self.engine.submit, req, self._callback(index))
        try:
            self.request_ids[index] = await asyncio.shield(fut)
        except asyncio.CancelledError:
            # The submit still completes on its thread: cancel what it admitted.
            fut.add_done_callback(self._cancel_admitted)
            raise

    def _cancel_admitted(self, fut: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self.engine.cancel(fut.result())

    def cancel_unfinished(self) -> None:
        for i, rid in enumerate(self.request_ids):
            if rid is not None and i not in self.finished:
                self.engine.cancel(rid)
                self.finished.add(i)

    async def events(self) -> AsyncIterator[tuple[int, Delta | Finished]]:
        deadline = self.loop.time() + self.timeout_s
        try:
            while len(self.finished) < len(self.request_ids):
                remaining = deadline - self.loop.time()
                try:
                    index, event = await asyncio.wait_for(self.queue.get(), max(remaining, 0.0))
                except TimeoutError:
                    raise APIError(504, f"request timed out after {self.timeout_s:g} s",
                                   code="timeout") from None
                if isinstance(event, Finished):
                    if index in self.finished:
                        continue
                    self.finished.add(index)
                    self.metrics.observe(event.stats)
                    if event.finish_reason == "error":
                        raise APIError(500, "generation failed", code="engine_error")
                    if event.finish_reason == "cancelled":  # not by us: the engine is shutting down
                        raise APIError(503, "request cancelled: server shutting down", code="shutdown")
                yield index, event
        finally:
            self.cancel_unfinished()

    async def results(self) -> list[Finished]:
        out: list[Finished | None] = [None] * len(self.request_ids)
        async for index, event in self.events():
            if isinstance(event, Finished):
                out[index] = event
        return out  # type: ignore[return-value]


async def submit_all(engine, metrics: Metrics, reqs: list[GenerationRequest], timeout_s: float) -> Generation:
    """Admit all of `reqs` or none: on EngineFull / PromptTooLong the admitted ones are cancelled."""
    gen = Generation(engine, metrics, timeout_s, len(reqs))
    try:
        for i, req in enumerate(reqs):
            await gen._submit(i, req)
    except BaseException:
        gen.cancel_unfinished()
        raise
    return gen


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (→ ClientDisconnected)."""
    task = asyncio.ensure_future(work)

    async def wait_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientDisconnected()
