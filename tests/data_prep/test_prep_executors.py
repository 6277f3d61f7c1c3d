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
