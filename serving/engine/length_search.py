"""Cheap length search for DLM infilling: try a few span sizes, keep the most confident.

A DLM fills a fixed canvas. A model trained with infill padding can close a span early
(`<|pad|>`), but a canvas much larger than the answer still invites filler. This decodes the
same infill request at a few canvas sizes as one batch (the candidates share forwards) and keeps
the candidate whose committed tokens, end token included, have the highest mean log-probability.
Not handled: streaming (the winner is known only at the end), AR engines and plain completions
(they get one ordinary request), length priors beyond the candidate list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from serving.engine.engine import Engine
from serving.engine.types import Finished, GenerationRequest


def generate_with_length_search(engine: Engine, req: GenerationRequest,
                                spans: Sequence[int] = (8, 16, 32)) -> Finished:
    """Blocking. Candidate canvases are `spans` capped at `req.max_tokens` (which is always tried).

    The returned stats count the work of every candidate (forward passes, total time); the text
    and completion tokens are the winner's.
    """
    if engine.objective != "dlm" or req.suffix is None:
        return engine.generate(req)
    sizes = sorted({min(s, req.max_tokens) for s in spans if s > 0} | {req.max_tokens})
    cands = [dataclasses.replace(req, max_tokens=s, request_id="", stream=False) for s in sizes]
    results = engine.generate_batch(cands)
    ok = [r for r in results if r.finish_reason != "error"] or results
    best = max(ok, key=lambda r: r.stats.mean_token_logprob)
    stats = dataclasses.replace(
        best.stats,
        forward_passes=sum(r.stats.forward_passes for r in results),
        queue_time_s=min(r.stats.queue_time_s for r in results),
        total_time_s=max(r.stats.total_time_s for r in results),
    )
    return Finished(req.request_id or best.request_id, best.text, best.finish_reason, stats, best.error,
                    best.stop_word)
