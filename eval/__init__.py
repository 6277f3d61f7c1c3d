"""Evaluation: HumanEval(+), MBPP(+), HumanEval-Infilling in a sandbox; proxies; memorization.

Public API:
- `eval.tasks.get_task(name, data_dir, limit, **options)`, `TASKS`, `parse_tasks`
- `eval.sandbox.run_program / run_many / run_many_jobs`, `Limits`, `ExecResult`, `isolation()`
- `eval.runner.score_samples(task, samples)`, `evaluate(backend, task_names, ...)`, `summarize`
- `eval.backends.EngineBackend / HttpBackend / make_backend`
- `eval.passk.pass_at_k(n, c, k)`, `mean_pass_at_k`
- `eval.proxies.run_proxies(loaded, data_dir, ...)`; `eval.callback.make_epoch_callback(...)`
- `eval.memorization.audit(loaded, data_dir, ...)`
- `eval.report.write_results / markdown_table / compare_pair`
CLI: `dcoder eval`, `dcoder eval-compare`, `dcoder eval-memorization` (eval/cli.py).
"""
