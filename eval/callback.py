"""The trainer's per-epoch hook: `make_epoch_callback(tasks, data_dir, **options)`.

The returned `callback(model, tokenizer, cfg, epoch, step) -> dict[str, float]` runs on rank 0
between epochs on the live model (restored to its training mode afterwards):
- "proxy": next-line multiple choice + line completion on `data_dir`'s val split (questions are
  built once and reused every epoch, so epochs are compared on the same items);
- any code task (humaneval, mbpp, infill-single, ...): greedy pass@1 on the first `limit`
  problems through the in-process engine.

Options: questions (200), line_questions (50), mc_samples (4), context_tokens (None: as many as fit),
seed (0), limit (20),
eval_data_dir (benchmark files; default $DCODER_EVAL_DATA / public), max_tokens (128), workers.
Not handled: a sharded (FSDP) model: the trainer must hand a model that runs on one rank.
"""

from __future__ import annotations

from collections.abc import Callable

from eval.tasks import PROXY, parse_tasks


def make_epoch_callback(tasks: list[str], data_dir: str, **options) -> Callable[..., dict[str, float]]:
    names = parse_tasks(tasks)
    state: dict = {}

    def callback(model, tokenizer, cfg, epoch: int, step: int) -> dict[str, float]:
        from coder.export import LoadedModel
        from data_prep.tokenizer import special_token_ids

        loaded = LoadedModel(model=model, tokenizer=tokenizer, config=cfg, objective=cfg.train.objective,
                             special_ids=special_token_ids(tokenizer), name=f"{cfg.name}-epoch{epoch}")
        was_training = model.training
        metrics: dict[str, float] = {}
        try:
            if PROXY in names:
                metrics.update(_proxy(loaded, data_dir, options, state))
            code = [n for n in names if n != PROXY]
            if code:
                metrics.update(_code_tasks(loaded, code, options))
        finally:
            model.train(was_training)
        return metrics

    return callback


def _proxy(loaded, data_dir: str, options: dict, state: dict) -> dict[str, float]:
    from eval.proxies import build_questions, run_proxies, validation_texts

    seed = options.get("seed", 0)
    if "questions" not in state:
        texts = validation_texts(data_dir, loaded.tokenizer)
        state["questions"] = build_questions(texts, loaded.tokenizer, options.get("questions", 200), seed)
    metrics = run_proxies(loaded, data_dir, cached=state["questions"], mc_samples=options.get("mc_samples", 4),
                          line_questions=options.get("line_questions", 50), seed=seed,
                          context_tokens=options.get("context_tokens"))
    # Per epoch, metrics.jsonl keeps the accuracy, its stderr and n; the Wilson bounds stay in the CLI's proxy.json.
    return {k: v for k, v in metrics.items() if not k.endswith(("_lo", "_hi"))}


def _code_tasks(loaded, names: list[str], options: dict) -> dict[str, float]:
    from eval.backends import EngineBackend
    from eval.runner import evaluate
    from serving.engine import Engine

    engine = Engine(loaded, max_batch=options.get("max_batch", 8), max_queue=256)
    backend = EngineBackend("", engine=engine)
    try:
        results = evaluate(backend, names, data_dir=options.get("eval_data_dir"), limit=options.get("limit", 20),
                           max_tokens=options.get("max_tokens", 128), workers=options.get("workers"),
                           ks=(1,), progress=False)
    finally:
        backend.close()
    return {f"{name}/pass@1": summary["pass@1"] for name, (summary, _) in results.items()}
