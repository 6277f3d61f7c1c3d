"""Prometheus metrics (names fixed by the shared contract; the deploy dashboards use them).

Each app owns its own `CollectorRegistry`, so several apps (tests) can live in one process.
Engine-side numbers come from each request's `RequestStats` when it finishes; the running and
waiting gauges are read from the engine at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from serving.engine.types import RequestStats

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TPF_BUCKETS = (1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0)


def _read(engine, name: str) -> float:
    if engine is None:
        return 0.0
    v = getattr(engine, name, 0)
    return float(v() if callable(v) else v)


class Metrics:
    def __init__(self, engine_getter: Callable[[], object | None]):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.ttft = Histogram("dcoder:time_to_first_token_seconds",
                              "Submit to first committed token.", buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("dcoder:e2e_request_latency_seconds",
                             "Submit to finished, per generation.", buckets=_LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("dcoder:request_queue_time_seconds",
                               "Submit to first model step.", buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens_per_forward = Histogram("dcoder:tokens_per_forward",
                                            "Committed tokens per model forward, per generation.",
                                            buckets=_TPF_BUCKETS, registry=r)
        self.running = Gauge("dcoder:num_requests_running", "Generations in engine slots.", registry=r)
        self.waiting = Gauge("dcoder:num_requests_waiting", "Generations queued for a slot.", registry=r)
        self.running.set_function(lambda: _read(engine_getter(), "num_running"))
        self.waiting.set_function(lambda: _read(engine_getter(), "num_waiting"))
        self.generation_tokens = Counter("dcoder:generation_tokens", "Completion tokens.", registry=r)
        self.prompt_tokens = Counter("dcoder:prompt_tokens", "Prompt tokens (prefix + suffix).", registry=r)
        self.forward_passes = Counter("dcoder:forward_passes", "Model forwards, summed per generation.",
                                      registry=r)
        self.requests = Counter("dcoder:requests", "HTTP requests by route and status.",
                                ["route", "status"], registry=r)

    def observe(self, stats: RequestStats) -> None:
        """Record one finished generation (one choice)."""
        self.e2e.observe(stats.total_time_s)
        self.queue.observe(stats.queue_time_s)
        if stats.completion_tokens:
            self.ttft.observe(stats.time_to_first_commit_s)
        if stats.forward_passes:
            self.tokens_per_forward.observe(stats.tokens_per_forward)
        self.generation_tokens.inc(stats.completion_tokens)
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.forward_passes.inc(stats.forward_passes)

    def render(self) -> bytes:
        return generate_latest(self.registry)
