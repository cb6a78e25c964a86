"""Submission module: launcher settings -> submitit, presets, the job callable, states, the sweep record."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from launcher.core.errors import ConfigError
from launcher.submit import (JobOutcome, LauncherParams, RunJob, SweepResult, _map_cluster_state, check_params,
                             chunks, executor_parameters, read_record, submitit_folder, write_record)


def test_slurm_parameters_are_prefixed_and_unset_ones_left_out():
    p = LauncherParams(cluster="slurm", partition="gpu", timeout_min=30, cpus_per_task=2, mem_gb=8,
                       array_parallelism=4, setup=["module load x"], additional_parameters={"mail-type": "END"})
    out = executor_parameters(p)
    assert out["timeout_min"] == 30 and out["cpus_per_task"] == 2 and out["mem_gb"] == 8
    assert out["slurm_partition"] == "gpu"
    assert out["slurm_array_parallelism"] == 4
    assert out["slurm_setup"] == ["module load x"]
    assert out["slurm_additional_parameters"] == {"mail-type": "END"}
    assert "slurm_qos" not in out and "gpus_per_node" not in out


def test_local_parameters_carry_no_slurm_keys():
    out = executor_parameters(LauncherParams(cluster="local", partition="gpu", setup=["export A=1"]))
    assert not any(k.startswith("slurm_") for k in out)
    assert out["local_setup"] == ["export A=1"]


def test_submitit_accepts_the_mapped_parameters(tmp_path):
    """The mapping is checked by submitit itself (it rejects unknown keys)."""
    from launcher.submit import make_executor

    ex = make_executor(LauncherParams(cluster="local", timeout_min=5, setup=["true"]), tmp_path)
    assert ex.cluster == "local"
    assert ex.parameters["timeout_min"] == 5


@pytest.mark.parametrize("field,value,needle", [
    ("cluster", "kubernetes", "hydra.launcher.cluster"),
    ("timeout_min", 0, "hydra.launcher.timeout_min"),
    ("array_parallelism", 0, "hydra.launcher.array_parallelism"),
    ("max_num_timeout", -1, "hydra.launcher.max_num_timeout"),
])
def test_bad_launcher_settings_are_one_line_config_errors(field, value, needle):
    p = LauncherParams(cluster="slurm")
    setattr(p, field, value)
    with pytest.raises(ConfigError) as e:
        check_params(p)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_local_launcher_refuses_several_nodes():
    with pytest.raises(ConfigError, match="nodes"):
        check_params(LauncherParams(cluster="local", nodes=2))


def test_chunks_split_at_max_array_size():
    parts = chunks(2500, 1001)
    assert [len(p) for p in parts] == [1001, 1001, 498]
    assert parts[0][0] == 0 and parts[-1][-1] == 2499
    assert chunks(3, 1001) == [range(0, 3)]


def test_submitit_folder_defaults_into_the_sweep_dir(tmp_path):
    assert submitit_folder(LauncherParams(), tmp_path) == tmp_path / ".submitit" / "%j"
    assert submitit_folder(LauncherParams(submitit_folder="${hydra.sweep.dir}/x"), tmp_path) == \
        tmp_path / ".submitit" / "%j"
    assert submitit_folder(LauncherParams(submitit_folder="/elsewhere/%j"), tmp_path) == Path("/elsewhere/%j")


def test_run_job_pickles_and_checkpoint_requeues_the_same_call():
    import cloudpickle
    from submitit.helpers import DelayedSubmission

    from launcher.core.schema import RunSpec

    spec = RunSpec(run_dir="/tmp/x")
    fn = pickle.loads(cloudpickle.dumps(RunJob()))
    delayed = fn.checkpoint(spec)
    assert isinstance(delayed, DelayedSubmission)
    assert delayed.function is fn and delayed.args == (spec,)


@pytest.mark.parametrize("slurm,ours", [
    ("PENDING", "PENDING"), ("REQUEUED", "PENDING"), ("RUNNING", "RUNNING"), ("COMPLETING", "RUNNING"),
    ("FAILED", "FAILED"), ("OUT_OF_MEMORY", "FAILED"), ("NODE_FAIL", "FAILED"), ("COMPLETED", "FAILED"),
    ("CANCELLED by 0", "CANCELLED"), ("TIMEOUT", "TIMEOUT"), ("PREEMPTED", "PREEMPTED"),
])
def test_cluster_states_map_to_summary_states(slurm, ours):
    # COMPLETED reaches this mapping only when the job left no result file: not a success
    assert _map_cluster_state(slurm) == ours


def test_failed_counts_cancelled_and_timeout_too(tmp_path):
    r = SweepResult(tmp_path, [JobOutcome(i, "", s, []) for i, s in
                               enumerate(["FINISHED", "FAILED", "CANCELLED", "TIMEOUT", "RUNNING", "SKIPPED"])])
    assert [o.state for o in r.failed] == ["FAILED", "CANCELLED", "TIMEOUT"]
    assert [o.state for o in r.pending] == ["RUNNING"]


def test_sweep_record_round_trip(tmp_path):
    outs = [JobOutcome(0, str(tmp_path / "0"), "PENDING", ["a=1"], job_id="7_0")]
    write_record(tmp_path, LauncherParams(cluster="slurm"), tmp_path / ".submitit" / "%j", outs, ["7"])
    rec = read_record(tmp_path)
    assert rec["cluster"] == "slurm" and rec["array_ids"] == ["7"]
    assert JobOutcome(**rec["jobs"][0]) == outs[0]


def test_missing_or_broken_sweep_record_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="SWEEP_DIR: file not found: .*sweep.json .is .* a sweep directory"):
        read_record(tmp_path)
    (tmp_path / "sweep.json").write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_record(tmp_path)
    (tmp_path / "sweep.json").write_text(json.dumps({"jobs": []}))
    with pytest.raises(ConfigError, match="not a sweep record"):
        read_record(tmp_path)


def test_launch_status_on_a_non_sweep_dir_exits_2(tmp_path, capsys):
    from launcher.status import main

    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "sweep.json" in err and "\n" not in err


@pytest.mark.parametrize("preset,cluster", [("inprocess", "inprocess"), ("local", "local"), ("slurm", "slurm"),
                                            ("slurm_gpu", "slurm")])
def test_presets_compose_through_hydra_and_run_yaml_alike(preset, cluster):
    """The same preset file gives the same LauncherParams through both front doors."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from launcher.resolvers import conf_dir, register
    from launcher.run import launcher_params_from_map
    from launcher.resolvers import register_configs
    from launcher.sweep import launcher_params

    register()
    register_configs()
    import hydra_plugins.mlip_launch.launcher  # noqa: F401 - registers hydra/launcher=mlip

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"hydra/launcher={preset}"], return_hydra_config=True)
            via_hydra = launcher_params(cfg.hydra.launcher)
    finally:
        GlobalHydra.instance().clear()
    via_yaml = launcher_params_from_map({"preset": preset})
    assert via_hydra.cluster == cluster == via_yaml.cluster
    if cluster != "inprocess":
        assert via_hydra.max_num_timeout > 0  # hydra-submitit-launcher's 0 would disable requeueing
    for key in ("timeout_min", "cpus_per_task", "gpus_per_node", "mem_gb", "max_num_timeout", "array_parallelism"):
        assert getattr(via_hydra, key) == getattr(via_yaml, key), key
    if preset == "slurm_gpu":
        assert via_hydra.gpus_per_node == 1
    if cluster == "slurm":
        assert via_hydra.timeout_min > 10  # submitit takes every USR2 for a timeout at <= 10 min
