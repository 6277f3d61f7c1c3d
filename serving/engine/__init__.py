"""The decoding engine (no HTTP): AR with a KV cache, DLM block-wise parallel decoding with a
prefix KV cache, infilling, and a step-granular continuous-batching scheduler.

    from serving.engine import Engine, GenerationRequest
    with Engine.from_path("runs/pair/dlm") as engine:
        print(engine.generate(GenerationRequest(prompt="def add(a, b):\\n")).text)

Files, top down: `types.py` (the contract: requests, events, stats, errors), `engine.py`
(admission and the scheduler thread), `slot.py` (per-request text, stop strings, streaming,
accounting), `ar.py` and `dlm.py` (the two decoders), `sampling.py` (token choice and commit
policies), `batch.py` (one padded forward over ragged rows with their own KV caches),
`length_search.py` (optional span-length search for DLM infilling).
"""

from serving.engine.engine import Engine
from serving.engine.length_search import generate_with_length_search
from serving.engine.types import (
    Delta,
    DLMParams,
    EngineFull,
    Finished,
    GenerationRequest,
    InvalidRequest,
    PromptTooLong,
    RequestStats,
)

__all__ = [
    "DLMParams", "Delta", "Engine", "EngineFull", "Finished", "GenerationRequest", "InvalidRequest",
    "PromptTooLong", "RequestStats", "generate_with_length_search",
]
