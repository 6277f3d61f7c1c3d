import os

import pytest

from data_prep.executors import ExecutorError, build_executor, parse_executor_opts
from data_prep.steps import TokenizeStep


def test_executor_opts_parse_json_values_and_reject_garbage():
    assert parse_executor_opts(["partition=cpu", "cpus_per_task=4", "time=02:00:00"]) == {
        "partition": "cpu", "cpus_per_task": 4, "time": "02:00:00"}
    with pytest.raises(ExecutorError, match="expected key=value"):
        parse_executor_opts(["partition"])


def test_slurm_executor_is_built_with_passthrough_options(tmp_path):
    from datatrove.executor import SlurmPipelineExecutor

    ex = build_executor("slurm", [TokenizeStep(str(tmp_path))], tasks=8, workers=4, logging_dir=str(tmp_path / "logs"),
                        opts=parse_executor_opts(["partition=cpu", "time=01:00:00", "cpus_per_task=2"]))
    assert isinstance(ex, SlurmPipelineExecutor)
    assert (ex.tasks, ex.partition, ex.time, ex.cpus_per_task) == (8, "cpu", "01:00:00", 2)
    with pytest.raises(ExecutorError, match="needs --executor-opt"):
        build_executor("slurm", [], tasks=1, workers=1, logging_dir=str(tmp_path / "l2"))


def test_ray_executor_is_built_when_ray_is_installed(tmp_path):
    pytest.importorskip("ray")
    ex = build_executor("ray", [TokenizeStep(str(tmp_path))], tasks=4, workers=2, logging_dir=str(tmp_path / "logs"),
                        opts={"cpus_per_task": 1})
    assert ex.world_size == 4


def test_unknown_executor_is_a_user_error(tmp_path):
    with pytest.raises(ExecutorError, match="unknown executor"):
        build_executor("kubernetes", [], tasks=1, workers=1, logging_dir=str(tmp_path))


def test_a_slurm_job_that_left_the_queue_with_ranks_missing_is_an_error_not_a_hang(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from data_prep.executors import ExecutorError, run_stage

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    squeue.write_text("#!/bin/sh\nexit 0\n")  # an empty listing: the job is gone
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    failed_job = SimpleNamespace(job_id="4242", run=lambda: None, get_incomplete_ranks=lambda skip_completed: [3],
                                 logging_dir=SimpleNamespace(path=str(tmp_path / "logs")))
    with pytest.raises(ExecutorError, match="Slurm job 4242 ended with ranks incomplete"):
        run_stage("clean", failed_job, tmp_path, show=False)
