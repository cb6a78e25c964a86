"""FairChem runs log where MACE runs do: FairChem's own TensorBoard events (or its wandb run) under
run_dir/logs/, and logs/curves.png from the metrics.jsonl records our runner writes.

The derive / parse tests need no FairChem env; the end-to-end ones train a real EquiformerV2 (FairChem's own test
config) in it on the demo data.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trainers.fairchem.derive import derive_config
from trainers.fairchem.logparse import MetricsTap

from .conftest import TEST_CONFIGS, empty_lmdbs

EQV2 = TEST_CONFIGS / "test_equiformerv2.yml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _spec(tmp_path, **train):
    from launcher.core.schema import RunSpec

    spec = RunSpec(backend="equiformer_v2", task="train", run_dir=str(tmp_path / "run"), device="cpu")
    for k, v in train.items():
        setattr(spec.train, k, v)
    return spec


@pytest.mark.parametrize("logger", ["tensorboard", "none"])
def test_train_logger_sets_fairchems_logger(fairchem_fixtures, tmp_path, logger):
    data = empty_lmdbs(tmp_path, "train", "val")
    d = derive_config(str(EQV2), mode="train", data=data, backend_args=[], env={}, spec=_spec(tmp_path, logger=logger))
    assert d.config["logger"] == {"name": logger}


def test_wandb_keeps_the_configs_wandb_settings_and_takes_the_project(fairchem_fixtures, tmp_path):
    import yaml

    cfg = tmp_path / "wandb.yml"
    cfg.write_text(yaml.safe_dump({**yaml.safe_load(EQV2.read_text()),
                                   "logger": {"name": "wandb", "entity": "lab", "project": "theirs"}}))
    data = empty_lmdbs(tmp_path, "train", "val")
    spec = _spec(tmp_path, logger="wandb")
    d = derive_config(str(cfg), mode="train", data=data, backend_args=[], env={}, spec=spec)
    assert d.config["logger"] == {"name": "wandb", "entity": "lab", "project": "theirs"}
    spec.train.wandb_project = "mine"
    d = derive_config(str(cfg), mode="train", data=data, backend_args=[], env={}, spec=spec)
    assert d.config["logger"]["project"] == "mine"
    # the default tensorboard replaces the config's wandb, and says so
    d = derive_config(str(cfg), mode="train", data=data, backend_args=[], env={}, spec=_spec(tmp_path))
    assert d.config["logger"] == {"name": "tensorboard"}
    assert any(n.startswith("logger: tensorboard (train.logger; the config asked for wandb") for n in d.notes)


def test_predictions_run_without_a_logger(fairchem_fixtures, tmp_path):
    data = empty_lmdbs(tmp_path, "test")
    d = derive_config(str(EQV2), mode="predict", data=data, backend_args=[], env={}, spec=_spec(tmp_path))
    assert d.config["logger"] == {"name": "none"}


def test_validation_records_get_the_step_of_their_epoch(tmp_path):
    path = tmp_path / "metrics.jsonl"
    seen = []
    tap = MetricsTap(path, "ts", on_val=lambda: seen.append(path.read_text().count("\n")), steps_per_epoch=13)
    tap("2026-12-01 10:00:00 (INFO): step 10 | epoch 0.769 | loss 3.1 | lr 2.500e-03 | 85.2 structures/s")
    tap("2026-12-01 10:00:01 (INFO): Evaluating on val.")
    tap("2026-12-01 10:00:02 (INFO): energy_mae: 1.2000, forces_mae: 0.3000, loss: 4.5000, epoch: 1.0000")
    tap("2026-12-01 10:00:03 (INFO): energy_mae: 1.1e+00, loss: 4.0e+00, lr: 1.0e-03, epoch: 1.08e+00, step: 1.4e+01")
    records = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["split"] for r in records] == ["train", "val", "train"]
    assert records[1]["step"] == 13 and records[1]["loss"] == 4.5
    assert seen == [2]                                      # curves redrawn once, after the val record
    # without the runner's count: the ratio of the latest train record
    tap2 = MetricsTap(tmp_path / "m2.jsonl", "ts")
    tap2("step 20 | epoch 1.538 | loss 3.1 | lr 2.500e-03 | 85.2 structures/s")
    tap2("Evaluating on val.")
    tap2("energy_mae: 1.2000, loss: 4.5000, epoch: 2.0000")
    assert json.loads((tmp_path / "m2.jsonl").read_text().splitlines()[-1])["step"] == 26


# ---------------------------------------------------------------------------------------- real trainings

def _run(tmp_path, demo_data, run_name: str, epochs: int, **train):
    from launcher.core.schema import check
    from launcher.job import run_job

    env = {"OMP_NUM_THREADS": "1"}
    if os.environ.get("MLIP_FAIRCHEM_TEST_PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["MLIP_FAIRCHEM_TEST_PYTHONPATH"]
    from launcher.core.schema import RunSpec

    spec = RunSpec(backend="equiformer_v2", task="train", run_dir=str(tmp_path / run_name), device="cpu", seed=0,
                   backend_env=env, backend_python=os.environ.get("MLIP_FAIRCHEM_PYTHON"))
    spec.train.config_yml = str(EQV2)
    spec.train.epochs = epochs
    for k, v in train.items():
        setattr(spec.train, k, v)
    for split in ("train", "val"):
        setattr(spec.data, split, str(demo_data[split]))
    lines: list = []
    res = run_job(check(spec), echo=lines.append)
    assert res.status == "finished", "\n".join(map(str, lines[-30:]))
    return Path(spec.run_dir), res


@pytest.mark.slow
@pytest.mark.fairchem
def test_fairchem_events_land_in_logs_tensorboard_once_per_step_across_a_stop(fairchem_python, fairchem_fixtures,
                                                                             demo_data, tmp_path):
    """A run stopped (SIGUSR2) in epoch 2 after logging steps past its epoch-1 checkpoint, then launched again:
    FairChem's own events of both invocations in run_dir/logs/tensorboard, each step once, val/loss at the steps
    and values of our metrics.jsonl; curves.png drawn."""
    import signal
    import subprocess
    import sys
    import time

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from launcher.core.atomic import read_jsonl
    from launcher.core.schema import RunSpec, check
    from launcher.core.specio import dump_run_yaml

    run_dir = tmp_path / "tb"
    spec = RunSpec(backend="equiformer_v2", task="train", run_dir=str(run_dir), device="cpu", seed=0,
                   backend_env={"OMP_NUM_THREADS": "1", **({"PYTHONPATH": os.environ["MLIP_FAIRCHEM_TEST_PYTHONPATH"]}
                                                           if os.environ.get("MLIP_FAIRCHEM_TEST_PYTHONPATH") else {})},
                   backend_python=os.environ.get("MLIP_FAIRCHEM_PYTHON"))
    spec.train.config_yml, spec.train.epochs, spec.train.log_every = str(EQV2), 3, 1
    spec.data.train, spec.data.val = str(demo_data["train"]), str(demo_data["val"])
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(dump_run_yaml(check(spec)))
    cmd = [sys.executable, "-m", "launcher.worker", str(run_yaml)]
    metrics = run_dir / "logs" / "metrics.jsonl"

    def steps(split):
        return [r.get("step") for r in read_jsonl(metrics) if r["split"] == split]

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if steps("val") and max(steps("train")) >= 16:     # 13 steps per epoch: in epoch 2, past the checkpoint
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGUSR2)
    out, _ = proc.communicate(timeout=300)
    assert json.loads((run_dir / "state.json").read_text())["status"] == "preempted", out[-3000:]
    stopped_at = max(steps("train"))
    first_run = {r["run"] for r in read_jsonl(metrics)}

    out2 = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out2.returncode == 0, (out2.stdout + out2.stderr)[-3000:]
    assert "continuing the interrupted run" in out2.stdout

    tb = run_dir / "logs" / "tensorboard"
    assert len(list(tb.glob("events.out.tfevents.*"))) == 2 and not [p for p in tb.iterdir() if p.is_dir()]
    assert not (run_dir / "fairchem" / "logs").exists()                      # nothing left in FairChem's own tree
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    assert {"train/loss", "train/lr", "val/loss", "val/energy_mae", "val/forces_mae"} <= set(acc.Tags()["scalars"])
    # the relaunch starts after the checkpoint it resumed from: the steps the stopped invocation logged past
    # it are redone (our metrics.jsonl keeps both invocations' records)
    redone = [r["step"] for r in read_jsonl(metrics) if r["split"] == "train" and r["run"] not in first_run]
    checkpoint_at = min(redone) - 1
    assert stopped_at > checkpoint_at, (stopped_at, checkpoint_at, steps("val"))   # the case this test is about
    assert all(steps("train").count(s) == 2 for s in range(checkpoint_at + 1, stopped_at + 1)), steps("train")
    train_steps = [e.step for e in acc.Scalars("train/loss")]
    # in the events, the stopped invocation's steps after its checkpoint are dropped: each step once
    assert train_steps == list(range(1, 40)), (train_steps, stopped_at, checkpoint_at, out2.stdout[-2000:])
    vals = [r for r in read_jsonl(metrics) if r["split"] == "val"]
    events = [(e.step, e.value) for e in acc.Scalars("val/loss")]
    # our records carry the step FairChem logged each validation at, and the value its log line printed (4 decimals)
    assert [r["step"] for r in vals] == [s for s, _ in events] == [13, 26, 39]
    assert [r["loss"] for r in vals] == pytest.approx([v for _, v in events], abs=1e-4)
    assert (run_dir / "logs" / "curves.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
@pytest.mark.fairchem
def test_fairchem_logger_none_and_wandb_offline(fairchem_python, fairchem_fixtures, demo_data, tmp_path,
                                                monkeypatch):
    from tests.trainers.mace.test_logging import wandb_records

    run_dir, _ = _run(tmp_path, demo_data, "none", epochs=1, logger="none")
    assert not (run_dir / "logs" / "tensorboard").exists() and not (run_dir / "fairchem" / "logs").exists()
    assert (run_dir / "logs" / "curves.png").read_bytes()[:8] == PNG_MAGIC

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run_dir, _ = _run(tmp_path, demo_data, "wb", epochs=1, logger="wandb", wandb_project="tests")
    assert "WANDB_MODE=offline" in next((run_dir / "fairchem" / "configs").glob("*.yml")).read_text()
    files = list((run_dir / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    summary, run = {}, None
    for record in wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "run":
            run = record.run
    from launcher.core.atomic import read_jsonl

    vals = [r for r in read_jsonl(run_dir / "logs" / "metrics.jsonl") if r["split"] == "val"]
    assert summary["val/loss"] == pytest.approx(vals[-1]["loss"], abs=1e-4)
    assert run.project == "tests" and run.display_name == "wb"
