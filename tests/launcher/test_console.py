"""What the console shows: metrics with units and 4 significant digits, third-party warnings kept in the logs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.core.metrics import fmt_metric, metric_unit, metrics_line, sig

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ numbers
@pytest.mark.parametrize("value, text", [
    (0.012345678, "0.01235"), (1.0, "1.000"), (123456.7, "1.235e+05"), (0.00012, "0.0001200"), (2, "2"),
    (None, "n/a"), (float("nan"), "nan"), (0.0, "0"), (-3.14159, "-3.142"), (1234.0, "1234"),
])
def test_sig_gives_four_significant_digits(value, text):
    assert sig(value) == text


@pytest.mark.parametrize("key, unit, factor", [
    ("energy_rmse_per_atom", "meV/atom", 1e3), ("energy_mae_per_atom", "meV/atom", 1e3),
    ("energy_mae", "eV", 1.0), ("energy_rmse", "eV", 1.0), ("force_rmse", "eV/Å", 1.0),
    ("forces_mae", "eV/Å", 1.0), ("forces_magnitude_error", "eV/Å", 1.0), ("forces_mse", "(eV/Å)²", 1.0),
    ("val/force_mae", "eV/Å", 1.0), ("loss", "", 1.0), ("lr", "", 1.0), ("forces_cosine_similarity", "", 1.0),
    ("energy_forces_within_threshold", "", 1.0),
])
def test_one_unit_per_quantity(key, unit, factor):
    assert metric_unit(key) == (unit, factor)


def test_metric_values_carry_their_unit():
    assert fmt_metric("energy_rmse_per_atom", 0.0123456) == "12.35 meV/atom"
    assert fmt_metric("force_rmse", 0.123456) == "0.1235 eV/Å"
    assert fmt_metric("energy_mae", 3.54123) == "3.541 eV"
    assert fmt_metric("loss", 1.885999) == "1.886"
    assert fmt_metric("force_rmse", None) == "n/a"


def test_metrics_line_of_an_evaluation_and_of_a_best_epoch():
    m = {"n_structures": 16, "n_atoms": 241, "energy_mae": 3.5412, "energy_rmse": 5.41321,
         "energy_mae_per_atom": 0.212399, "energy_rmse_per_atom": 0.28201, "force_mae": 0.43119,
         "force_rmse": 0.70111, "split": "test", "by_group": {"bulk": {}}}
    assert metrics_line(m) == ("16 structures (241 atoms): E_mae=3.541 eV, E_rmse=5.413 eV, "
                               "E_mae/atom=212.4 meV/atom, E_rmse/atom=282.0 meV/atom, F_mae=0.4312 eV/Å, "
                               "F_rmse=0.7011 eV/Å")
    best = {"force_rmse": 1.2041, "loss": 1.53512, "energy_rmse_per_atom": 0.29199, "lr": 0.0025}
    assert metrics_line(best) == "loss=1.535, E_rmse/atom=292.0 meV/atom, F_rmse=1.204 eV/Å, lr=0.0025"
    assert metrics_line(best, keys=["force_mae"]) == "F_mae=n/a"


def test_loss_on_the_epoch_lines_has_four_digits():
    from trainers.mace.loop import sig     # what the loop formats its losses with

    assert sig(1.88609123) == "1.886" and sig(None) == "n/a"


# ------------------------------------------------------------------ FairChem's output
FAIRCHEM_OUTPUT = """\
[mlip-launch] FairChem interpreter started early: imports 9.29 s overlapped the launcher's set-up
/env/lib/python3.11/site-packages/fairchem/core/models/escn/so3.py:23: FutureWarning: You are using `torch.load` with `weights_only=False` (the current default value)
  _Jd = torch.load(os.path.join(os.path.dirname(__file__), "Jd.pt"))
INFO:root:Loading model: equiformer_v2
WARNING:root:equiformer_v2 (EquiformerV2) class is deprecated in favor of equiformer_v2_backbone_and_heads
2026-12-01 16:47:38 /env/fairchem/core/common/data_parallel.py:88: (WARNING): Disabled BalancedBatchSampler because num_replicas=1.
/env/lib/python3.11/site-packages/torch/autograd/graph.py:769: UserWarning: Grad strides do not match bucket view strides.
grad.sizes() = [1, 4], strides() = [1, 1]
bucket_view.sizes() = [1, 4], strides() = [4, 1] (Triggered internally at ../torch/csrc/distributed/c10d/reducer.cpp:327.)
  return Variable._execution_engine.run_backward(  # Calls into the C++ engine to run the backward pass
step 1 | epoch 0.077 | loss 92.7237 | lr 2.500e-03 | 14.6 structures/s
INFO:root:energy_mae: 4.32e+00, forces_mae: 7.72e-01, forces_cosine_similarity: 4.34e-01, loss: 1.70e+02, lr: 2.50e-03, epoch: 7.69e-01, step: 1.00e+01
INFO:root:Evaluating on val.
2026-12-01 16:47:39 /env/fairchem/core/trainers/ocp_trainer.py:1: (INFO): energy_mae: 4.5266, forces_mae: 0.6884, loss: 138.9165, epoch: 1.0000
[mlip-launch] FairChem 3.04 s; checkpoint summary 0.10 s
"""


def test_fairchem_console_keeps_warnings_out_and_gives_metrics_units():
    from trainers.fairchem.logparse import ConsoleLines

    console = ConsoleLines()
    shown = [s for s in (console(line) for line in FAIRCHEM_OUTPUT.splitlines()) if s is not None]
    assert shown == [
        "[mlip-launch] FairChem interpreter started early: imports 9.29 s overlapped the launcher's set-up",
        "INFO:root:Loading model: equiformer_v2",
        "step 1 | epoch 0.077 | loss 92.72 | lr 0.0025 | 14.60 structures/s",
        "[fairchem] train step 10 epoch 0.769: loss=170.0, E_mae=4.320 eV, F_mae=0.7720 eV/Å, "
        "forces_cosine_similarity=0.4340, lr=0.0025",
        "INFO:root:Evaluating on val.",
        "[fairchem] val epoch 1.000: loss=138.9, E_mae=4.527 eV, F_mae=0.6884 eV/Å",
        "[mlip-launch] FairChem 3.04 s; checkpoint summary 0.10 s",
    ]


def test_fairchem_metrics_of_both_log_formats_reach_metrics_jsonl(tmp_path):
    from launcher.core.atomic import read_jsonl
    from trainers.fairchem.logparse import MetricsTap

    tap = MetricsTap(tmp_path / "metrics.jsonl", "train-x")
    for line in FAIRCHEM_OUTPUT.splitlines():
        tap(line)
    recs = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r.get("kind") != "progress"]
    assert [(r["split"], r["loss"]) for r in recs] == [("train", 170.0), ("val", 138.9165)]
    assert recs[1]["energy_mae"] == 4.5266                    # full precision in the file


# ------------------------------------------------------------------ third-party warnings
CAPTURE = """
import sys, warnings
import numpy as np
from pathlib import Path
from trainers.mace.runlog import third_party_warnings
warnings.simplefilter("always")
log = Path(sys.argv[1])
with third_party_warnings(log):
    np.mean(np.zeros(0))                         # numpy's RuntimeWarning: raised in numpy, a real third party
    import trainers.mace.backend as ours         # a warning raised by code in our package
    exec(compile("import warnings; warnings.warn('eval.amp: ours, from our code', UserWarning)", ours.__file__,
                 "exec"))
with third_party_warnings(None):                 # the other ranks: dropped
    np.mean(np.zeros(0))
np.mean(np.zeros(0))                             # outside: as Python shows it
"""


def test_third_party_warnings_go_to_the_log_and_ours_to_the_console(tmp_path):
    log = tmp_path / "train.log"
    p = subprocess.run([sys.executable, "-c", CAPTURE, str(log)], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    assert p.returncode == 0, p.stderr
    text = log.read_text()
    assert "third-party warning:" in text and "Mean of empty slice" in text and "eval.amp" not in text
    assert p.stderr.count("Mean of empty slice") == 1          # only the one outside the context
    assert "eval.amp: ours, from our code" in p.stderr
    assert "cuequivariance" not in p.stdout + p.stderr        # mace imported quietly, its print logged
    if "cuequivariance" in text:
        assert "third-party output: cuequivariance" in text


@pytest.mark.slow
def test_a_real_mace_run_keeps_third_party_warnings_off_the_console(tmp_path, demo_data):
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"model": "MACE", "num_channels": 8, "max_L": 0, "max_ell": 2, "correlation": 2,
                                 "num_interactions": 1, "r_max": 4.0, "num_radial_basis": 6,
                                 "radial_MLP": [16, 16], "MLP_irreps": "8x0e", "E0s": "average"}))
    run_dir = tmp_path / "run"
    cmd = [str(Path(sys.executable).with_name("launch")), "backend=mace", "task=train", "device=cpu",
           f"data.train={demo_data['val']}", f"data.val={demo_data['test']}", f"train.input_json={model}",
           "train.epochs=1", "train.batch_size=8", "train.dtype=float32", "train.amp=true", "train.progress_bar=false",
           f"run_dir={run_dir}"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    console = p.stdout + p.stderr
    log = (run_dir / "logs" / "train.log").read_text()
    for noise in ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "cuequivariance", "TorchScript"):
        assert noise not in console, noise
    # this machine's e3nn / mace warn and print on every fresh process; where they do, train.log has them
    # (the mechanism itself is tested above with a warning numpy raises)
    if "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" in log:
        assert "third-party warning:" in log
    if "cuequivariance" in log:
        assert "third-party output: cuequivariance" in log
    assert "train.amp: autocast is CUDA-only" in p.stderr       # our own warning still reaches the console
    assert " meV/atom" in console and " eV/Å" in console and "best val (epoch 1): loss=" in console
