"""Real FairChem runs on the demo LMDB: train, resume, fine-tune, evaluate, infer, export (slow).

FairChem's own test configs run unchanged apart from our data paths and the epoch count
(``train.epochs``); no backend_args: the demo data mixes bulk (periodic) and slab (non-periodic z)
cells, and the launcher sets what that needs (per-structure graphs, GemNet-OC's quadruplet tags) itself.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from launcher.job import run_job
from launcher.core.layout import RunLayout
from launcher.core.schema import IndexSampling, RunSpec, check
from trainers.api import JobContext
from trainers.fairchem.backend import FairchemBackend
from trainers.fairchem.checkpoints import NATIVE_CHECKPOINT

from .conftest import TEST_CONFIGS

pytestmark = [pytest.mark.slow, pytest.mark.fairchem]

CONFIGS = {"equiformer_v2": TEST_CONFIGS / "test_equiformerv2.yml", "gemnet_oc": TEST_CONFIGS / "test_gemnet_oc.yml"}
RELOAD = Path(__file__).with_name("reload_weights.py")
ASE_CALCULATOR = Path(__file__).with_name("ase_calculator.py")


def make_spec(run_dir: Path, backend: str, data: dict, task: str = "train", args=(), epochs=2, config=True,
              **kw) -> RunSpec:
    env = {"OMP_NUM_THREADS": "1"}
    if os.environ.get("MLIP_FAIRCHEM_TEST_PYTHONPATH"):  # development against a partial env
        env["PYTHONPATH"] = os.environ["MLIP_FAIRCHEM_TEST_PYTHONPATH"]
    spec = RunSpec(backend=backend, task=task, run_dir=str(run_dir), device="cpu", seed=0, backend_env=env,
                   backend_python=os.environ.get("MLIP_FAIRCHEM_PYTHON"), backend_args=list(args))
    if epochs is not None:
        spec.train.epochs = epochs
    if config:
        spec.train.config_yml = str(CONFIGS[backend])
    for split in ("train", "val", "test"):
        setattr(spec.data, split, str(data[split]))
    for k, v in kw.items():
        if "." in k:
            section, key = k.split(".")
            setattr(getattr(spec, section), key, v)
        else:
            setattr(spec, k, v)
    if task != "train" and not config:
        spec.train.config_yml = None
    return check(spec)


def run(spec: RunSpec):
    lines: list = []
    res = run_job(spec, echo=lines.append)
    return res, "\n".join(str(x) for x in lines)


class Trained(dict):
    """Tiny 2-epoch training runs, made on first use: trained[backend] -> (run_dir, JobResult)."""

    def __init__(self, data, root):
        super().__init__()
        self.data, self.root = data, root

    def __missing__(self, backend):
        run_dir = self.root / backend
        res, _ = run(make_spec(run_dir, backend, self.data))
        self[backend] = (run_dir, res)
        return self[backend]


@pytest.fixture(scope="module")
def trained(fairchem_python, fairchem_fixtures, demo_data, tmp_path_factory):
    return Trained(demo_data, tmp_path_factory.mktemp("fc"))


def reload_env() -> dict:
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    if os.environ.get("MLIP_FAIRCHEM_TEST_PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["MLIP_FAIRCHEM_TEST_PYTHONPATH"]
    return env


@pytest.mark.parametrize("backend", ["equiformer_v2", "gemnet_oc"])
def test_train_leaves_the_standard_layout(trained, backend):
    run_dir, res = trained[backend]
    layout = RunLayout.of(run_dir)
    assert res.status == "finished"
    assert res.result["epochs_done"] == 2
    assert layout.best_model.is_file() and layout.checkpoint.is_file() and layout.run_yaml.is_file()
    assert (layout.artifacts / "fairchem_checkpoint.pt").is_file()
    m = json.loads(layout.manifest.read_text())
    assert m["backend"] == backend and m["model"]["name"] == backend
    assert m["fairchem"]["best"] is True and m["fairchem"]["weights"] == "best"
    assert m["versions"]["fairchem-core"] == "1.10.0"
    assert np.isfinite(m["metrics"]["energy_mae"]) and np.isfinite(m["metrics"]["forces_mae"])
    logs = list(layout.logs.glob("fairchem-train-*.log"))
    assert len(logs) == 1 and "Total time taken" in logs[0].read_text()
    records = [json.loads(x) for x in layout.metrics_jsonl.read_text().splitlines()]
    assert {r["split"] for r in records} >= {"train", "val"}
    assert json.loads(layout.state_json.read_text())["status"] == "finished"


@pytest.mark.parametrize("backend", ["equiformer_v2", "gemnet_oc"])
def test_exported_weights_reload_strictly(trained, fairchem_python, backend):
    run_dir, _ = trained[backend]
    out = subprocess.run([fairchem_python, str(RELOAD), str(RunLayout.of(run_dir).manifest)], capture_output=True,
                         text=True, env=reload_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].startswith("ok ")


@pytest.mark.parametrize("backend", ["equiformer_v2", "gemnet_oc"])
def test_the_export_loads_in_fairchems_ase_calculator(trained, demo_data, fairchem_python, tmp_path, backend):
    """artifacts/fairchem_checkpoint.pt in FairChem's own OCPCalculator, no extra arguments: the energy of a
    test structure equals our evaluate's."""
    run_dir, _ = trained[backend]
    exported = RunLayout.of(run_dir).artifacts / "fairchem_checkpoint.pt"
    res, _ = run(make_spec(tmp_path / "eval", backend, demo_data, task="evaluate", model_in=str(exported)))
    rows = (RunLayout.of(tmp_path / "eval").eval_dir / "predictions.csv").read_text().splitlines()
    index, energy = rows[3].split(",")[:2]
    out = subprocess.run([fairchem_python, str(ASE_CALCULATOR), str(exported), str(demo_data["test"]), index],
                         capture_output=True, text=True, env=reload_env())
    assert out.returncode == 0, out.stderr[-2000:]
    theirs = float(out.stdout.strip().splitlines()[-1].split()[1])
    assert theirs == pytest.approx(float(energy), rel=1e-4, abs=1e-5)


def test_evaluate_agrees_with_fairchems_own_validation(trained, demo_data):
    """Our metrics from FairChem's predictions = FairChem's val metrics of the best checkpoint."""
    run_dir, _ = trained["equiformer_v2"]
    layout = RunLayout.of(run_dir)
    spec = make_spec(run_dir, "equiformer_v2", demo_data, task="evaluate",
                     model_in=str(layout.checkpoints / "best_checkpoint.pt"), **{"eval.split": "val"})
    res, _ = run(spec)
    ours = json.loads((layout.eval_dir / "metrics.json").read_text())
    theirs = json.loads(layout.manifest.read_text())["metrics"]
    assert ours["n_structures"] == 16
    assert ours["energy_mae"] == pytest.approx(theirs["energy_mae"], rel=1e-3)
    assert ours["force_mae"] == pytest.approx(theirs["forces_mae"], rel=1e-3)
    assert res.result["metrics"]["energy_mae"] == ours["energy_mae"]


def _derived(run_dir: Path, task: str) -> str:
    cfgs = sorted((Path(run_dir) / "fairchem" / "configs").glob(f"{task}-*.yml"), key=lambda p: p.stat().st_mtime)
    return cfgs[-1].read_text()


def test_evaluate_gemnet_oc_on_test_and_infer(trained, demo_data):
    """The model is rebuilt as trained (per-structure graphs, widened qint_tags), not from config_yml."""
    run_dir, _ = trained["gemnet_oc"]
    layout = RunLayout.of(run_dir)
    model = json.loads(layout.manifest.read_text())["model"]
    assert model["use_pbc_single"] is True and model["qint_tags"] == [0, 1, 2]   # what training set
    best = str(layout.checkpoints / "best_checkpoint.pt")
    res, _ = run(make_spec(run_dir, "gemnet_oc", demo_data, task="evaluate", model_in=best))
    derived = _derived(run_dir, "evaluate")
    cfg = yaml.safe_load(derived)
    assert cfg["model"] == model and "# model: as trained, from " in derived
    assert "model.use_pbc_single: True (the data mixes" not in derived          # not re-decided from the data
    m = json.loads((layout.eval_dir / "metrics.json").read_text())
    assert m["n_structures"] == 16 and m["n_atoms"] > 16
    assert all(np.isfinite(m[k]) for k in ("energy_mae", "energy_rmse", "energy_mae_per_atom", "force_mae", "force_rmse"))
    rows = (layout.eval_dir / "predictions.csv").read_text().splitlines()
    assert len(rows) == 17 and rows[0] == "index,energy,energy_per_atom,natoms"
    f = np.load(layout.eval_dir / "predictions_forces.npz")
    assert f["forces"].shape == (m["n_atoms"], 3)

    (layout.eval_dir / "metrics.json").unlink()
    res, _ = run(make_spec(run_dir, "gemnet_oc", demo_data, task="infer", model_in=best))
    assert not (layout.eval_dir / "metrics.json").exists()
    assert len((layout.eval_dir / "predictions.csv").read_text().splitlines()) == 17


def test_resume_continues_from_the_run_dirs_checkpoint(trained, demo_data, tmp_path):
    src, _ = trained["equiformer_v2"]
    run_dir = tmp_path / "resumed"
    shutil.copytree(src, run_dir)
    spec = make_spec(run_dir, "equiformer_v2", demo_data, task="resume", config=False, **{"train.epochs": 3})
    result = FairchemBackend(echo=lambda line: None).run(JobContext(spec=spec, layout=RunLayout.of(run_dir)))
    assert result["epochs_done"] == 3
    cfgs = sorted((run_dir / "fairchem" / "configs").glob("resume-*.yml"))
    text = cfgs[0].read_text()                             # no config_yml: the checkpoint's config, 2 epochs
    assert len(cfgs) == 1 and "optim.max_epochs: 2 -> 3 (train.epochs)" in text and "config: the one saved" in text
    log = next(RunLayout.of(run_dir).logs.glob("fairchem-resume-*.log")).read_text()
    assert "Loading checkpoint from" in log


def test_finetune_starts_from_weights_with_a_fresh_optimizer(trained, demo_data, tmp_path):
    src, _ = trained["equiformer_v2"]
    run_dir = tmp_path / "ft"
    spec = make_spec(run_dir, "equiformer_v2", demo_data, task="finetune",
                     model_in=str(RunLayout.of(src).artifacts / "fairchem_checkpoint.pt"),
                     epochs=1, **{"train.lr": 0.001})
    res, _ = run(spec)
    assert res.status == "finished" and res.result["epochs_done"] == 1
    init = list((run_dir / "fairchem" / "init").glob("*-weights.pt"))
    assert len(init) == 1
    import torch

    ck = torch.load(init[0], map_location="cpu", weights_only=False)
    assert "optimizer" not in ck and "epoch" not in ck and "state_dict" in ck


def test_evaluate_a_model_trained_with_use_pbc_single_from_its_manifest(fairchem_python, fairchem_fixtures,
                                                                         demo_data, tmp_path):
    """GemNet-OC trained with --model.use_pbc_single=True evaluates with no config_yml and with one that lacks it."""
    src = tmp_path / "gemnet-single"
    few = {"data.train_indices": IndexSampling(max_samples=12, shuffle=True, seed=1),
           "data.val_indices": IndexSampling(max_samples=4)}
    res, _ = run(make_spec(src, "gemnet_oc", demo_data, epochs=1, args=["--model.use_pbc_single=True"], **few))
    assert res.status == "finished"
    manifest = RunLayout.of(src).manifest
    assert json.loads(manifest.read_text())["model"]["use_pbc_single"] is True
    for name, kw in (("from-manifest", {"config": False, "model.manifest": str(manifest)}),
                     ("with-config", {"model_in": str(src)})):            # a run directory: its checkpoint
        run_dir = tmp_path / name
        spec = make_spec(run_dir, "gemnet_oc", demo_data, task="evaluate", epochs=None,
                         **{"data.test_indices": IndexSampling(max_samples=6)}, **kw)
        res, _ = run(spec)
        assert res.status == "finished", res.message
        metrics = json.loads((RunLayout.of(run_dir).eval_dir / "metrics.json").read_text())
        assert metrics["n_structures"] == 6 and np.isfinite(metrics["force_mae"])
        derived = _derived(run_dir, "evaluate")
        assert yaml.safe_load(derived)["model"]["use_pbc_single"] is True
        assert ("# model: as trained, from " if name == "with-config" else "# config: the one saved") in derived
        assert "(the data mixes" not in derived                              # the trained config, not the data


@pytest.mark.parametrize("backend", ["equiformer_v2", "gemnet_oc"])
def test_finetune_from_our_manifest_without_config_yml(trained, demo_data, tmp_path, backend):
    """The manifest of a model this launcher trained is all a fine-tune needs; run keys override its config."""
    src, _ = trained[backend]
    run_dir = tmp_path / f"ft-{backend}"
    spec = make_spec(run_dir, backend, demo_data, task="finetune", config=False, epochs=1,
                     **{"model.manifest": str(RunLayout.of(src).manifest), "train.lr": 5e-4,
                        "train.optimizer": "sgd", "train.batch_size": 4,
                        "data.train_indices": IndexSampling(max_samples=12, shuffle=True, seed=1),
                        "data.val_indices": IndexSampling(max_samples=4)})
    res, _ = run(spec)
    assert res.status == "finished" and res.result["epochs_done"] == 1, res.message
    derived = _derived(run_dir, "finetune")
    cfg = yaml.safe_load(derived)
    assert f"# config: the one saved with the model, from {RunLayout.of(src).manifest}" in derived
    for line in ("optim.lr_initial: 0.0025 -> 0.0005 (train.lr)", "optim.optimizer: AdamW -> SGD (train.optimizer)",
                 "optim.batch_size: 5 -> 4 (train.batch_size)", "optim.max_epochs: 2 -> 1 (train.epochs)"):
        assert f"# {line}" in derived
    assert cfg["model"] == json.loads(RunLayout.of(src).manifest.read_text())["model"]
    assert cfg["dataset"]["train"]["src"].endswith(".lmdb") and "cmd" not in cfg


def test_run_keys_reach_childs_training_options(trained, demo_data, tmp_path):
    """accum_steps, freeze, early_stop_factor and log_every run inside FairChem's trainer (child.py)."""
    src, _ = trained["equiformer_v2"]
    run_dir = tmp_path / "ft-options"
    spec = make_spec(run_dir, "equiformer_v2", demo_data, task="finetune", config=False, epochs=2,
                     **{"model.manifest": str(RunLayout.of(src).manifest), "train.accum_steps": 2,
                        "train.freeze": "head_only", "train.early_stop_factor": 2.0, "train.patience": 1,
                        "train.log_every": 1, "train.batch_size": 2,
                        "data.train_indices": IndexSampling(max_samples=8), "data.val_indices": IndexSampling(max_samples=4)})
    res, out = run(spec)
    assert res.status == "finished", res.message
    fairchem_log = next(RunLayout.of(run_dir).logs.glob("fairchem-finetune-*.log")).read_text()
    command = fairchem_log.splitlines()[0]                            # "$ <the command>"
    assert (f"--accum-steps 2 --freeze head_only --early-stop 2 --log-every 1 --progress-log "
            f"{RunLayout.of(run_dir).train_log} --") in command
    progress = RunLayout.of(run_dir).train_log.read_text().splitlines()
    assert [line.split(" | ")[0] for line in progress if line.startswith("step ")][:4] == [
        "step 1", "step 2", "step 3", "step 4"]                       # 8 structures / batch 2 / accum 2 = 2 per epoch
    assert "freeze head_only: training" in fairchem_log


def test_a_training_without_validation_leaves_its_final_weights(fairchem_python, fairchem_fixtures, demo_data,
                                                                tmp_path):
    """optim.eval_every beyond the run's steps: FairChem never validates nor checkpoints; the run still finishes
    with artifacts/best_model.pt (the final weights, reloadable) and a manifest that says so."""
    run_dir = tmp_path / "no-val"
    spec = make_spec(run_dir, "equiformer_v2", demo_data, epochs=2, args=["--optim.eval_every=1000"],
                     **{"train.batch_size": 4, "data.train_indices": IndexSampling(max_samples=8),
                        "data.val_indices": IndexSampling(max_samples=4)})
    res, _ = run(spec)
    assert res.status == "finished", res.message
    layout = RunLayout.of(run_dir)
    assert layout.best_model.is_file() and layout.checkpoint.is_file()
    derived = next(layout.native("fairchem").glob("configs/train-*.yml")).read_text()
    assert "# optim.eval_every: 1000 steps, and this run trains steps 1-4: no validation will run" in derived
    assert "[mlip-launch] step 4: no checkpoint fell due since step 0" in \
        next(layout.logs.glob("fairchem-train-*.log")).read_text()
    m = json.loads(layout.manifest.read_text())
    assert (m["fairchem"]["best"], m["fairchem"]["weights"], m["fairchem"]["step"]) == (None, "final", 4)
    assert m["metrics"] == {} and res.result["best_val_metric"] is None and res.result["epochs_done"] == 2
    assert not list(layout.native("fairchem").glob("checkpoints/*/best_checkpoint.pt"))
    reload = subprocess.run([fairchem_python, str(RELOAD), str(layout.manifest)], capture_output=True, text=True,
                            env=reload_env())
    assert reload.returncode == 0, reload.stderr[-2000:]


def test_finetune_from_a_v1_bundle(trained, demo_data, tmp_path):
    """The original implementation's manifest form (legacy model/model_attributes config, bare weights with a
    sha256), made from a model trained here: fine-tuned with model.manifest + model.weights and no config_yml."""
    from launcher.core.layout import sha256_file
    from trainers.fairchem.checkpoints import read_checkpoint_config

    src, _ = trained["equiformer_v2"]
    layout = RunLayout.of(src)
    saved = read_checkpoint_config(layout.artifact(NATIVE_CHECKPOINT))
    model = dict(saved["model"])
    legacy = {**{k: v for k, v in saved.items() if k not in ("model", "dataset", "val_dataset")},
              "model": model.pop("name"), "model_attributes": model,
              "dataset": {k: v for k, v in saved["dataset"].items() if k != "src"}}
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(layout.best_model, bundle / "best_model.pt")
    manifest = {"schema_version": "v1", "backend": "equiformer_v2", "rebuildable": True,
                "weights": {"path": str(bundle / "best_model.pt"), "format": "torch",
                            "sha256": sha256_file(bundle / "best_model.pt")},
                "config": legacy}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    run_dir = tmp_path / "ft-v1"
    spec = make_spec(run_dir, "equiformer_v2", demo_data, task="finetune", config=False, epochs=1,
                     **{"model.manifest": str(bundle / "manifest.json"), "model.weights": str(bundle / "best_model.pt"),
                        "data.train_indices": IndexSampling(max_samples=8), "data.val_indices": IndexSampling(max_samples=4)})
    res, _ = run(spec)
    assert res.status == "finished" and res.result["epochs_done"] == 1, res.message
    cfg = yaml.safe_load(_derived(run_dir, "finetune"))
    assert cfg["model"]["name"] == "equiformer_v2" and "model_attributes" not in cfg
    # export from the bundle alone: our manifest keeps its model config; evaluate from the exported weights
    res, _ = run(make_spec(tmp_path / "export-v1", "equiformer_v2", demo_data, task="export", config=False,
                           epochs=None, **{"model.manifest": str(bundle / "manifest.json")}))
    exported = RunLayout.of(tmp_path / "export-v1")
    ours = json.loads(exported.manifest.read_text())
    assert ours["model"] == cfg["model"] and ours["fairchem"]["config"]["model"] == cfg["model"]
    res, _ = run(make_spec(tmp_path / "eval-v1", "equiformer_v2", demo_data, task="evaluate", config=False,
                           epochs=None, model_in=str(exported.best_model),
                           **{"data.test_indices": IndexSampling(max_samples=4)}))
    assert res.status == "finished" and res.result["metrics"]["n_structures"] == 4
    assert f"# config: the one saved with the model, from {exported.manifest}" in _derived(tmp_path / "eval-v1",
                                                                                         "evaluate")
    # a damaged copy of the weights the manifest names is refused before FairChem starts
    (bundle / "best_model.pt").write_bytes(b"not the weights")
    from launcher.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model\.manifest: .*best_model\.pt has sha256 .*, but .* records"):
        run(make_spec(tmp_path / "ft-v1-bad", "equiformer_v2", demo_data, task="finetune", config=False, epochs=1,
                      **{"model.manifest": str(bundle / "manifest.json")}))


def test_export_task_from_a_checkpoint(trained, demo_data, fairchem_python, tmp_path):
    src, _ = trained["equiformer_v2"]
    run_dir = tmp_path / "exported"
    spec = make_spec(run_dir, "equiformer_v2", demo_data, task="export",
                     model_in=str(RunLayout.of(src).checkpoints / "best_checkpoint.pt"))
    res, _ = run(spec)
    layout = RunLayout.of(run_dir)
    assert layout.best_model.is_file() and layout.manifest.is_file()
    out = subprocess.run([fairchem_python, str(RELOAD), str(layout.manifest)], capture_output=True, text=True,
                         env=reload_env())
    assert out.returncode == 0, out.stderr[-2000:]


def test_preempted_job_stops_cleanly_and_resumes_when_relaunched(fairchem_python, fairchem_fixtures, demo_data,
                                                                  tmp_path):
    """SIGUSR2 (SLURM/submitit preemption) reaches FairChem; launching the same run.yaml again resumes it."""
    import signal
    import sys
    import time

    from launcher.core.specio import dump_run_yaml

    run_dir = tmp_path / "preempt"
    spec = make_spec(run_dir, "equiformer_v2", demo_data, epochs=4)
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(dump_run_yaml(spec))
    cmd = [sys.executable, "-m", "launcher.worker", str(run_yaml)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if list((run_dir / "fairchem" / "checkpoints").glob("*/checkpoint.pt")):
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGUSR2)  # at once: the next checkpoint write may be in progress, which must not matter
    out, _ = proc.communicate(timeout=300)
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "preempted", out[-3000:]
    assert RunLayout.of(run_dir).checkpoint.is_file()       # the last epoch checkpoint, mirrored
    native = sorted((run_dir / "fairchem" / "checkpoints").glob("*/checkpoint.pt"))
    assert len(native) == 1 and os.path.samefile(native[0], RunLayout.of(run_dir).checkpoint)

    out2 = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out2.returncode == 0, (out2.stdout + out2.stderr)[-3000:]
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "finished" and state["attempt"] == 2
    assert state["result"]["epochs_done"] == 4
    assert "continuing the interrupted run" in out2.stdout


OC22_SHRUNK = {
    "equiformer_v2": ("equiformer_v2/equiformer_v2_N@18_L@6_M@2_e4_f100_121M.yml", [
        "--model.num_layers=1", "--model.sphere_channels=8", "--model.attn_hidden_channels=8", "--model.num_heads=2",
        "--model.attn_alpha_channels=4", "--model.attn_value_channels=4", "--model.ffn_hidden_channels=8",
        "--model.edge_channels=8", "--model.lmax_list=[2]", "--model.mmax_list=[2]", "--model.num_sphere_samples=16",
        "--model.max_neighbors=8",
        "--optim.scheduler_params.warmup_epochs=1"]),  # 0.1 epoch of 8 steps rounds to 0 warmup steps: 1/0
    "gemnet_oc": ("gemnet-oc/gemnet_oc.yml", [
        "--model.num_blocks=1", "--model.emb_size_atom=8", "--model.emb_size_edge=8", "--model.num_radial=8",
        "--model.num_spherical=3", "--model.emb_size_rbf=2", "--model.emb_size_cbf=2", "--model.emb_size_sbf=2",
        "--model.emb_size_trip_in=4", "--model.emb_size_trip_out=4", "--model.emb_size_quad_in=2",
        "--model.emb_size_quad_out=2", "--model.emb_size_aint_in=4", "--model.emb_size_aint_out=4",
        "--model.max_neighbors=8"]),
}


@pytest.mark.parametrize("backend", sorted(OC22_SHRUNK))
def test_oc22_production_config_shrunk_through_backend_args(fairchem_python, fairchem_fixtures, demo_data, tmp_path,
                                                           backend):
    """FairChem's OC22 configs (includes, linref, normalizers, wandb logger) run as given, made small by backend_args."""
    from .conftest import OC22

    rel, shrink = OC22_SHRUNK[backend]
    common = ["--optim.max_epochs=1", "--optim.num_workers=0", "--optim.batch_size=8", "--optim.eval_batch_size=8",
              "--dataset.train.format=lmdb",  # our records are not OC22 records (no 'oc22' field)
              "--optim.load_balancing_on_error=warn_and_no_balance"]  # no metadata.npz (atom counts) beside our LMDB
    spec = make_spec(tmp_path / "run", backend, demo_data, args=[*common, *shrink], epochs=None)
    spec.train.config_yml = str(OC22 / rel)
    res, out = run(check(spec))
    assert res.status == "finished" and res.result["epochs_done"] == 1
    derived = next((tmp_path / "run" / "fairchem" / "configs").glob("train-*.yml")).read_text()
    assert "logger:\n  name: tensorboard" in derived and "includes" not in derived
    assert json.loads(RunLayout.of(tmp_path / "run").manifest.read_text())["model"]["name"] == backend
