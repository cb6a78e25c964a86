"""``launch -m hydra/sweeper=optuna``: an Optuna study through our launchers (in-process and local here; SLURM in
tests/slurm/test_slurm_optuna.py), on real tiny MACE trainings: each trial reports its eval.objective, a failed trial
is told to Optuna as FAIL and the study goes on, the summary ranks the trials; bad input is one line, exit 2, nothing
written."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from tests.slurm.conftest import REPO, run_cli, tiny_mace_keys

OPTUNA = ["-m", "hydra/sweeper=optuna"]


def _keys(demo_data, epochs: int = 2, without: tuple = ()) -> List[str]:
    """The tiny MACE training's keys (a key fixed here is not searched: leave out the ones a test samples)."""
    return [f"{k}={v}" for k, v in tiny_mace_keys(demo_data).items() if k not in without] + [f"train.epochs={epochs}"]


def _summary(sweep: Path) -> List[Dict[str, str]]:
    with open(sweep / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def best_val_loss(run_dir: Path) -> float:
    """The lowest validation loss the run logged (what eval.objective=val_loss must report)."""
    recs = [json.loads(line) for line in (Path(run_dir) / "logs" / "metrics.jsonl").read_text().splitlines() if line]
    return min(r["loss"] for r in recs if r.get("split") == "val")


def _bad_model_json(tmp_path: Path) -> Path:
    """A model.json that passes preflight and fails when the model is built (a trial that fails at run time)."""
    bad = json.loads((REPO / "conf" / "mace" / "tiny.json").read_text())
    bad["MLP_irreps"] = "not-irreps"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    return path


# ------------------------------------------------------------------ bad input: one line, exit 2, nothing written

@pytest.mark.parametrize("args, needle", [
    (["eval.objective=val_nope", "train.lr=interval(1e-4,1e-2)"], "eval.objective: 'val_nope' is not one of val_loss"),
    (["eval.objective=val_forces_mae", "train.lr=interval(1e-4,1e-2)"],
     "eval.objective: backend=mace does not record 'val_forces_mae'"),
    (["train.optimizer=interval(1,2)"], "train.optimizer=interval(1,2): samples numbers, but train.optimizer takes a str"),
    (["train.patience=interval(1.5,3.0)"], "samples floats, but train.patience takes an int"),
    (["train.lrr=interval(0.1,0.2)"], "unknown key 'train.lrr'"),
    (["train.lr=interval(-1.0,0.01)"], "[train.lr=-1.0] train.lr: must be > 0"),
    (["data.batch_size=choice(8,0)"], "[data.batch_size=0] data.batch_size: must be >= 1"),
    (["eval.objective=choice(val_loss,val_force_mae)"], "eval.objective is what the study minimises"),
    (["hydra.sweeper.direction=maximize", "train.lr=interval(1e-4,1e-2)"], "hydra.sweeper.direction: maximize"),
    (["hydra/launcher=slurm", "hydra.launcher.wait=false", "train.lr=interval(1e-4,1e-2)"], "hydra.launcher.wait"),
    (["hydra.sweeper.max_failure_rate=2", "train.lr=interval(1e-4,1e-2)"], "hydra.sweeper.max_failure_rate: must be"),
    (["hydra.sweeper.n_trials=0", "train.lr=interval(1e-4,1e-2)"], "hydra.sweeper.n_trials: must be >= 1"),
    (["seed=1"], "nothing to search"),
])
def test_bad_study_input_is_one_line_exit_2_and_writes_nothing(launch, demo_data, tmp_path, args, needle):
    sweep = tmp_path / "sweep"
    code, out, err = launch(*OPTUNA, f"hydra.sweep.dir={sweep}", *_keys(demo_data), *args)
    assert code == 2, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not sweep.exists() and not (tmp_path / "runs").exists()


def test_objective_of_a_task_without_metrics_is_refused(launch, demo_data, tmp_path):
    (tmp_path / "none.model").write_bytes(b"")
    code, _, err = launch(*OPTUNA, f"hydra.sweep.dir={tmp_path / 'sweep'}", *_keys(demo_data), "task=evaluate",
                          f"model_in={tmp_path / 'none.model'}", "eval.objective=val_loss",
                          "eval.split=choice(val,test)")
    assert code == 2
    assert "eval.objective: task=evaluate records no 'val_loss'" in err
    assert not (tmp_path / "sweep").exists()


def test_dry_run_validates_the_study_and_runs_nothing(launch, demo_data, tmp_path):
    sweep = tmp_path / "sweep"
    code, out, err = launch(*OPTUNA, f"hydra.sweep.dir={sweep}", *_keys(demo_data), "dry_run=true",
                            "hydra.sweeper.n_trials=5", "train.lr=tag(log,interval(1e-4,1e-2))")
    assert code == 0, err
    assert "an Optuna study of 5 trial(s), 2 per batch, minimising val_loss over train.lr" in out
    assert not sweep.exists()


# ------------------------------------------------------------------ a bad search space: refused before optuna loads

BAD_SPACES = [
    ("train.lr=interval(0.2,0.1)", "expected interval(low, high) with low < high"),
    ("train.lr=tag(log,interval(0,1))", "a log interval needs low > 0"),
    ("train.lrr=interval(0.1,0.2)", "unknown key 'train.lrr'"),
    ("data.batch_size=choice(a,b)", "choice 'a' is not a valid value of data.batch_size"),
    ("train.optimizer=choice(adam,sgd2)", "choice 'sgd2': train.optimizer is one of"),
    ("train.optimizer=interval(1,2)", "samples numbers, but train.optimizer takes a str"),
    ("train.patience=range(1.5,4.5)", "samples floats, but train.patience takes an int"),
    ("train.epochs=range(5,1)", "an empty range"),
    ("train.lr=glob(*)", "not glob(...)"),
    ("hydra.job.name=choice(a,b)", "'hydra.job.name=choice(a,b)'"),  # Hydra's own refusal
    ("seed=1", "nothing to search"),
]


@pytest.mark.parametrize("arg, needle", BAD_SPACES)
def test_bad_search_space_is_refused_without_importing_optuna(launch, demo_data, tmp_path, monkeypatch, arg,
                                                              needle):
    import sys

    for name in ("optuna", "hydra_plugins.hydra_optuna_sweeper._impl", "hydra_plugins.mlip_launch._optuna"):
        monkeypatch.setitem(sys.modules, name, None)  # importing any of them now raises ImportError
    sweep = tmp_path / "sweep"
    code, out, err = launch(*OPTUNA, f"hydra.sweep.dir={sweep}", *_keys(demo_data), arg, "dry_run=true")
    assert code == 2, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not sweep.exists()


@pytest.mark.parametrize("space, needle", [
    ({"train.patience": {"type": "float", "low": 1, "high": 3}}, "search_space.train.patience: samples floats"),
    ({"train.nope": {"type": "int", "low": 1, "high": 3}}, "unknown key 'train.nope'"),
    ({"train.lr": {"type": "float", "low": 0.1, "high": 0.01}}, "expected low <= high"),
    ({"train.optimizer": {"type": "categorical", "choices": ["adam", "nadam"]}}, "choice 'nadam'"),
    ({"train.lr": {"type": "gaussian", "low": 0.1, "high": 0.2}}, "type must be int, float or categorical"),
])
def test_bad_search_space_config_entries(space, needle):
    from launcher.study_space import search_space_problems

    problems = search_space_problems(["seed=1"], space)
    assert len(problems) == 1 and needle in problems[0], problems


@pytest.mark.parametrize("arg, needle", [
    ("train.epochs=range(1,10,0)", "step > 0"),      # Python's range() would raise; never iterated
    ("train.epochs=range(10,1,-2)", "step > 0"),     # the plugin would give optuna low > high
    ("train.epochs=range(5,1)", "an empty range"),
    ("train.lr=interval(0.1,0.1)", "low < high"),
    ("data.batch_size=choice()", "empty choice"),    # from a config's hydra.sweeper.params: one line too
    ("train.lr=foo(1,2)", "Unknown function 'foo'"),
])
def test_bad_ranges_are_one_line(arg, needle):
    from launcher.study_space import search_space_problems

    problems = search_space_problems([arg])
    assert len(problems) == 1 and problems[0].startswith(arg) and needle in problems[0], problems


def test_a_sound_search_space_has_no_problems():
    from launcher.study_space import search_space_problems

    assert search_space_problems(["train.batch_size=range(4,17,4)", "train.lr=tag(log,interval(1e-4,1e-2))",
                                  "train.optimizer=choice(adam,adamw)", "train.amp=choice(true,false)",
                                  "backend=choice(mace,equiformer_v2)"]) == []
    # a key fixed on the command line is not searched: its search-space entry is not checked
    assert search_space_problems(["train.lr=0.01", "seed=choice(1,2)"],
                                 {"train.lr": {"type": "float", "low": 1, "high": 0}}) == []
    # the later override of a key wins, as in Hydra
    assert search_space_problems(["train.lr=interval(1,0)", "train.lr=interval(0.1,0.2)"]) == []


@pytest.mark.slow
def test_bad_search_space_in_a_fresh_process_is_quick_and_loads_no_optuna(demo_data, tmp_path):
    """As the user runs it: one line, exit 2, and neither optuna nor scipy imported (what took seconds)."""
    import subprocess
    import sys
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLIP_DEBUG", None)
    for arg, needle in (BAD_SPACES[0], BAD_SPACES[2], BAD_SPACES[3]):
        start = time.monotonic()
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", "launcher.cli", *OPTUNA,
                            f"hydra.sweep.dir={tmp_path / 'sweep'}", *_keys(demo_data), arg, "dry_run=true"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        took = time.monotonic() - start
        imports = [ln for ln in r.stderr.splitlines() if ln.startswith("import time:")]
        lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("import time:")]
        assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr[-2000:]
        loaded = {ln.split("|")[-1].strip() for ln in imports}
        assert "optuna" not in loaded and "scipy" not in loaded and "torch" not in loaded, arg
        assert took < 60, took  # generous: the point is the imports above, not this machine's speed
    assert not (tmp_path / "sweep").exists()


# ------------------------------------------------------------------ ranking (no runs needed)

def test_summary_ranks_trials_by_objective_and_puts_failed_ones_last(tmp_path):
    from launcher.submit import JobOutcome
    from launcher.summary import write_summary

    outcomes = [JobOutcome(0, "", "FINISHED", ["train.lr=0.1"], objective=2.5),
                JobOutcome(1, "", "FAILED", ["train.lr=9.0"], error="TrainingDiverged: loss is nan"),
                JobOutcome(2, "", "FINISHED", ["train.lr=0.01"], objective=0.7),
                JobOutcome(3, "", "SKIPPED", ["train.lr=0.001"], objective=1.1)]
    write_summary(tmp_path, outcomes, objective="val_loss")
    table = _summary(tmp_path)
    assert [(r["rank"], r["index"], r["state"]) for r in table] == [
        ("1", "2", "FINISHED"), ("2", "3", "SKIPPED"), ("3", "0", "FINISHED"), ("", "1", "FAILED")]
    assert table[0]["objective"] == "0.7" and table[-1]["objective"] == ""
    md = (tmp_path / "summary.md").read_text()
    assert "Best: trial 2, val_loss = 0.7, `train.lr=0.01`" in md
    # without an objective (a grid sweep) the order and columns stay as they were
    write_summary(tmp_path / "grid", outcomes)
    assert [r["index"] for r in _summary(tmp_path / "grid")] == ["0", "1", "2", "3"]
    assert "rank" not in _summary(tmp_path / "grid")[0]


# ------------------------------------------------------------------ end to end, real MACE trainings

class _StudySpy:
    """Keeps the optuna Study the sweeper creates, so the test can read what Optuna was told."""

    def __init__(self, monkeypatch) -> None:
        import optuna

        self.studies: list = []
        real = optuna.create_study

        def create_study(*args, **kwargs):
            study = real(*args, **kwargs)
            self.studies.append(study)
            return study

        monkeypatch.setattr(optuna, "create_study", create_study)


@pytest.mark.slow
def test_inprocess_study_tells_failed_trials_fail_and_goes_on(launch, demo_data, tmp_path, monkeypatch):
    from optuna.trial import TrialState

    spy = _StudySpy(monkeypatch)
    sweep = tmp_path / "sweep"
    good, bad = REPO / "conf" / "mace" / "tiny.json", _bad_model_json(tmp_path)
    code, out, err = launch(*OPTUNA, "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=4",
                            f"hydra.sweep.dir={sweep}", *_keys(demo_data, without=("train.input_json",)),
                            f"train.input_json=choice({good},{bad})", "train.lr=choice(0.01,0.02)")
    assert code == 1, out[-2000:] + err[-2000:]  # some trials failed: exit 1, after the whole study ran
    assert "2 of 4 trial(s) FAILED (told to Optuna as FAIL)" in err

    (study,) = spy.studies
    trials = {t.user_attrs["job"]: t for t in study.trials}
    assert sorted(trials) == [0, 1, 2, 3]      # both batches ran although the first had a failure
    for job, t in trials.items():
        if t.params["train.input_json"] == str(bad):
            assert t.state == TrialState.FAIL and t.value is None
            assert "Irreps" in t.user_attrs["error"]
        else:
            assert t.state == TrialState.COMPLETE
            assert t.value == best_val_loss(sweep / str(job))   # the run's best validation loss, exactly

    table = _summary(sweep)
    assert [r["state"] for r in table] == ["FINISHED", "FINISHED", "FAILED", "FAILED"]
    assert [r["rank"] for r in table] == ["1", "2", "", ""]
    assert float(table[0]["objective"]) <= float(table[1]["objective"])
    assert all("Irreps" in r["error"] for r in table[2:])
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == study.best_value == pytest.approx(float(table[0]["objective"]))
    assert results["best_params"] == study.best_params and results["best_job"] == int(table[0]["index"])
    assert results["n_complete"] == 2 and results["n_failed"] == 2
    assert (sweep / "multirun.yaml").is_file()


@pytest.mark.slow
def test_local_launcher_study_runs_batches_as_parallel_jobs(demo_data, tmp_path):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [*OPTUNA, "hydra/launcher=local", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.sampler.seed=0", f"hydra.sweep.dir={sweep}", *_keys(demo_data),
            "train.lr=tag(log,interval(1e-4,1e-2))", "eval.objective=val_force_rmse"]
    res = run_cli("launcher.cli", args, env, REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("submitted 2 run(s) to local") == 2   # one submission per batch of n_jobs trials

    record = json.loads((sweep / "sweep.json").read_text())
    assert record["objective"] == "val_force_rmse" and len(record["array_ids"]) == 2
    assert sorted(j["index"] for j in record["jobs"]) == [0, 1, 2, 3]
    table = _summary(sweep)
    assert [r["rank"] for r in table] == ["1", "2", "3", "4"] and {r["state"] for r in table} == {"FINISHED"}
    values = [float(r["objective"]) for r in table]
    assert values == sorted(values)
    for r in table:
        lr = float(r["overrides"].split("=")[1])
        assert 1e-4 <= lr <= 1e-2
        recs = [json.loads(x) for x in (Path(r["run_dir"]) / "logs" / "metrics.jsonl").read_text().splitlines() if x]
        assert float(r["objective"]) == pytest.approx(min(x["force_rmse"] for x in recs if x.get("split") == "val"),
                                                      rel=1e-9)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert math.isclose(results["best_value"], values[0], rel_tol=1e-9)
    assert results["objective"] == "val_force_rmse" and results["n_complete"] == 4


@pytest.mark.slow
def test_evaluate_study_reports_the_metric_of_eval_metrics_json(launch, demo_data, tmp_path, monkeypatch):
    spy = _StudySpy(monkeypatch)
    base = tmp_path / "base"
    code, _, err = launch(*_keys(demo_data, epochs=1), f"run_dir={base}")
    assert code == 0, err[-2000:]
    sweep = tmp_path / "sweep"
    code, out, err = launch(*OPTUNA, "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=2",
                            "hydra.sweeper.n_jobs=1", f"hydra.sweep.dir={sweep}", *_keys(demo_data),
                            "task=evaluate", f"model_in={base / 'artifacts' / 'manifest.json'}",
                            "eval.objective=val_force_rmse", "data.test_indices.max_samples=choice(2,4)")
    assert code == 0, out[-2000:] + err[-2000:]
    (study,) = spy.studies
    assert len(study.trials) == 2
    for t in study.trials:
        metrics = json.loads((sweep / str(t.user_attrs["job"]) / "eval" / "metrics.json").read_text())
        assert metrics["n_structures"] == t.params["data.test_indices.max_samples"]
        assert t.value == metrics["force_rmse"]
    table = _summary(sweep)
    assert [r["rank"] for r in table] == ["1", "2"]
    assert float(table[0]["objective"]) == pytest.approx(study.best_value, rel=1e-12)
