"""The engine: admission, a scheduler thread, and the blocking conveniences.

Continuous batching at step granularity: each tick admits waiting requests into free slots (at
most `max_batch` running), applies cancellations, asks every running slot for its next step,
runs them (AR decode rows as one forward over the persistent `KVPool`, the rest as padded
forwards, `batch.run_grouped`) and hands each slot its logits. Requests join and leave between
ticks: an AR request in its prefill and one in its 40th token advance in the same tick, as do
DLM requests computing a block and one refreshing its cache. Callbacks run on the scheduler
thread, outside the engine lock (a callback may call `submit` or `cancel`).

Not handled: priorities or fairness beyond FIFO admission, preemption, several models per engine.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections import deque

import torch

from serving.engine.ar import ARSlot
from serving.engine.batch import StepInput, StepOutput, run_grouped
from serving.engine.dlm import DLMSlot
from serving.engine.kvpool import KVPool
from serving.engine.slot import EventSink, ModelInfo, Slot, encode_context
from serving.engine.types import (
    Delta,
    EngineFull,
    Finished,
    GenerationRequest,
    InvalidRequest,
    PromptTooLong,
)

log = logging.getLogger(__name__)

_POLICIES = ("threshold", "low_confidence", "entropy", "random")


class Engine:
    """Serves one loaded model (AR or DLM). See serving/engine/types.py for the threading contract."""

    def __init__(self, loaded, *, max_batch: int = 8, max_queue: int = 64):
        if max_batch < 1 or max_queue < 0:
            raise InvalidRequest(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch}, {max_queue}")
        self.loaded = loaded
        self.model = loaded.model.eval()
        self.tokenizer = loaded.tokenizer
        self.objective: str = loaded.objective
        self.model_name: str = loaded.name
        self.max_context: int = loaded.config.model.max_seq_len
        self.max_batch, self.max_queue = max_batch, max_queue
        self.info = ModelInfo(
            tokenizer=loaded.tokenizer,
            special=dict(loaded.special_ids),
            device=next(self.model.parameters()).device,
            vocab_size=loaded.config.model.vocab_size,
            max_context=self.max_context,
            fim=loaded.config.train.fim_rate > 0,
        )
        # AR decode keeps each running request's keys in a persistent pool (see kvpool.py)
        self.kv_pool = KVPool(self.model, max_batch) if self.objective == "ar" else None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: deque[Slot] = deque()
        self._running: list[Slot] = []
        self._cancelled: set[str] = set()
        self._ids: set[str] = set()  # request ids waiting or running
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    def from_path(cls, path: str, *, device: str = "cpu", dtype=None, max_batch: int = 8,
                  max_queue: int = 64) -> Engine:
        """Load a model dir (export) or a run dir (its latest checkpoint)."""
        from coder.export import load_model

        return cls(load_model(path, device=device, dtype=dtype), max_batch=max_batch, max_queue=max_queue)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("engine is shut down")
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._loop, name="dcoder-engine", daemon=True)
            self._thread.start()

    def shutdown(self) -> None:
        """Stop the scheduler; requests still waiting or running finish as "cancelled"."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._lock:
            left = list(self._waiting) + self._running
            self._waiting.clear()
            self._running.clear()
            self._ids.clear()
        now = time.monotonic()
        for slot in left:
            slot.finish("cancelled", now)

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # -- requests ----------------------------------------------------------------------------
    def submit(self, req: GenerationRequest, on_event: EventSink) -> str:
        """Queue a request; returns its id. Raises EngineFull, PromptTooLong, InvalidRequest."""
        _validate(req)
        if not req.request_id:
            req.request_id = uuid.uuid4().hex
        context, suffix = encode_context(req, self.info, self.objective)
        need = len(context) + len(suffix) + req.max_tokens
        if need > self.max_context:
            raise PromptTooLong(
                f"prompt ({len(context) + len(suffix)} tokens incl. suffix and markers) + max_tokens "
                f"({req.max_tokens}) = {need} exceeds the model's context of {self.max_context} tokens"
            )
        t = time.monotonic()
        if self.objective == "dlm":
            slot: Slot = DLMSlot(req, self.info, on_event, t, context, suffix)
        else:
            slot = ARSlot(req, self.info, on_event, t, context, self.kv_pool)
        with self._lock:
            if self._closed:
                raise RuntimeError("engine is shut down")
            if req.request_id in self._ids:
                raise InvalidRequest(f"request id {req.request_id!r} is already in use")
            if len(self._waiting) + len(self._running) >= self.max_batch + self.max_queue:
                raise EngineFull(f"{len(self._running)} running and {len(self._waiting)} waiting")
            self._ids.add(req.request_id)
            slot.on_release = self._release
            self._waiting.append(slot)
            self._wake.notify_all()
        return req.request_id

    def _release(self, request_id: str) -> None:
        with self._lock:
            self._ids.discard(request_id)
            self._cancelled.discard(request_id)

    def cancel(self, request_id: str) -> bool:
        """Cancel a waiting or running request at the next tick; False if it is unknown/finished."""
        with self._lock:
            if request_id not in self._ids:
                return False
            self._cancelled.add(request_id)
            self._wake.notify_all()
            return True

    def generate(self, req: GenerationRequest) -> Finished:
        """Blocking: submit, wait for the Finished event (starts the scheduler if needed)."""
        return self.generate_batch([req])[0]

    def generate_batch(self, reqs: list[GenerationRequest]) -> list[Finished]:
        """Blocking: run all requests (queued as capacity allows), results in input order."""
        self.start()
        results: list[Finished | None] = [None] * len(reqs)
        done = threading.Condition()

        def sink(i: int):
            def on_event(ev: Delta | Finished) -> None:
                if isinstance(ev, Finished):
                    with done:
                        results[i] = ev
                        done.notify_all()
            return on_event

        for i, req in enumerate(reqs):
            # a copy with a fresh id: the caller's request objects stay reusable
            req = dataclasses.replace(req, request_id=req.request_id or uuid.uuid4().hex)
            while True:
                try:
                    self.submit(req, sink(i))
                    break
                except EngineFull:  # wait for any request to finish, then retry
                    with done:
                        done.wait(timeout=0.05)
        with done:
            done.wait_for(lambda: all(r is not None for r in results))
        return results  # type: ignore[return-value]

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text).ids)

    # -- scheduler ---------------------------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                try:
                    if not self._tick():
                        return
                except Exception as e:  # a scheduler bug must fail requests, not hang their callers
                    log.exception("scheduler tick failed")
                    with self._lock:
                        failed, self._running = self._running, []
                    for s in failed:
                        s.finish("error", time.monotonic(), error=f"{type(e).__name__}: {e}")

    def _tick(self) -> bool:
        """One scheduler step; False when the engine is shutting down."""
        with self._lock:
            while not self._closed and not self._waiting and not self._running:
                self._wake.wait()
            if self._closed:
                return False
            cancelled = [s for s in list(self._waiting) + self._running if s.request_id in self._cancelled]
            for s in cancelled:
                if s in self._running:
                    self._running.remove(s)
                else:
                    self._waiting.remove(s)
            while len(self._running) < self.max_batch and self._waiting:
                self._running.append(self._waiting.popleft())
            batch = list(self._running)
        now = time.monotonic()
        for s in cancelled:
            s.finish("cancelled", now)
        rows, stepping = [], []
        for s in batch:
            try:
                inp = s.prepare(now)
            except Exception as e:
                log.exception("prepare failed for %s", s.request_id)
                s.finish("error", now, error=f"{type(e).__name__}: {e}")
                continue
            if inp is not None:
                rows.append(inp)
                stepping.append(s)
        if rows:
            for s in stepping:
                s.mark_step(now)
            try:
                outs = self._forward(rows, stepping)
            except Exception as e:  # e.g. out of memory: fail this tick's requests, keep serving
                log.exception("model step failed")
                outs = None
                for s in stepping:
                    s.finish("error", time.monotonic(), error=f"{type(e).__name__}: {e}")
            if outs is not None:
                now = time.monotonic()
                for s, out in zip(stepping, outs, strict=True):
                    try:
                        s.advance(out, now)
                    except Exception as e:
                        log.exception("advance failed for %s", s.request_id)
                        s.finish("error", now, error=f"{type(e).__name__}: {e}")
        with self._lock:
            self._running = [s for s in self._running if s.finished is None]
        return True

    def _forward(self, rows: list[StepInput], slots: list[Slot]) -> list[StepOutput]:
        """This tick's model work: AR decode rows as one forward over the KV pool, the rest
        (prefills, DLM steps) as padded batches."""
        outs: list[StepOutput | None] = [None] * len(rows)
        pooled = sorted((i for i, r in enumerate(rows) if r.pooled), key=lambda i: slots[i].kv_row)
        if pooled:
            if [slots[i].kv_row for i in pooled] != list(range(len(self.kv_pool))):
                raise RuntimeError("KV pool rows out of step with the running requests")
            logits = self.kv_pool.decode(self.model, torch.cat([rows[i].ids for i in pooled]),
                                         torch.cat([rows[i].positions for i in pooled]))
            for j, i in enumerate(pooled):
                outs[i] = StepOutput(logits=logits[j : j + 1], kv=None)
        rest = [i for i, r in enumerate(rows) if not r.pooled]
        if rest:
            for i, out in zip(rest, run_grouped(self.model, [rows[i] for i in rest]), strict=True):
                outs[i] = out
        return outs  # type: ignore[return-value]


def _validate(req: GenerationRequest) -> None:
    d = req.dlm
    problems = [
        (req.max_tokens < 1, f"max_tokens must be >= 1, got {req.max_tokens}"),
        (req.temperature < 0, f"temperature must be >= 0, got {req.temperature}"),
        (not 0 < req.top_p <= 1, f"top_p must be in (0, 1], got {req.top_p}"),
        (req.top_k < 0, f"top_k must be >= 0, got {req.top_k}"),
        (req.deadline_s is not None and req.deadline_s < 0, f"deadline_s must be >= 0, got {req.deadline_s}"),
        (d.block_length < 1, f"dlm.block_length must be >= 1, got {d.block_length}"),
        (d.steps is not None and d.steps < 1, f"dlm.steps must be >= 1, got {d.steps}"),
        (not 0 <= d.threshold <= 1, f"dlm.threshold must be in [0, 1], got {d.threshold}"),
        (d.remasking not in _POLICIES, f"dlm.remasking must be one of {_POLICIES}, got {d.remasking!r}"),
        (d.cache_refresh not in ("full", "append"), f"dlm.cache_refresh must be 'full' or 'append', "
                                                    f"got {d.cache_refresh!r}"),
    ]
    for bad, message in problems:
        if bad:
            raise InvalidRequest(message)

