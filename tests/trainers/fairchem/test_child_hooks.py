"""The training options child.py adds to FairChem v1's trainer: accumulation, head-only, early stop, progress lines.

The real trainer runs in the FairChem env on a few demo structures (FairChem's own EquiformerV2 test
config), started the way the launcher starts it: ``child.py run [options] -- <FairChem CLI args>``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from trainers.fairchem import child, patches
from trainers.fairchem.logparse import MetricsTap, parse_progress

from .conftest import TEST_CONFIGS

CHILD = Path(child.__file__).resolve()
EQV2 = TEST_CONFIGS / "test_equiformerv2.yml"
GEMNET = TEST_CONFIGS / "test_gemnet_oc.yml"
PER_STRUCTURE_PBC = "--model.use_pbc_single=True"  # the demo data mixes periodic and slab cells

# One JSON line about checkpoint argv[1]; with argv[2], which state_dict entries differ from that one's.
INSPECT = r"""
import json, sys, torch
load = lambda p: torch.load(p, map_location="cpu", weights_only=False)
a = load(sys.argv[1])
out = {"step": a.get("step"), "epoch": a.get("epoch"), "mlip_launch": a.get("mlip_launch")}
if a.get("optimizer"):
    out["optimizer_steps"] = sorted({int(s["step"]) for s in a["optimizer"]["state"].values()})
    out["optimizer_numel"] = sum(s["exp_avg"].numel() for s in a["optimizer"]["state"].values() if "exp_avg" in s)
if len(sys.argv) > 2:
    b = load(sys.argv[2])["state_dict"]
    sd = a["state_dict"]
    assert sorted(sd) == sorted(b)
    out["changed"] = sorted(k for k in sd if not torch.equal(sd[k], b[k]))
    out["max_rel_diff"] = max(((sd[k] - b[k]).abs().max() / (b[k].abs().max() + 1e-12)).item()
                              for k in sd if sd[k].is_floating_point() and sd[k].numel())
print(json.dumps(out))
"""

# FairChem's own CLI, without our child: the reference loop.
NATIVE = "import sys\nsys.argv = ['fairchem', *sys.argv[1:]]\nfrom fairchem.core._cli import main\nmain()\n"

# child.py with each validation reseeded: EquiformerV2 draws random edge frames, so the same weights validate
# to numbers ~1e-8 apart, and FairChem counts such a difference as an improvement. Reseeded, they tie.
SEEDED_VALIDATION = r"""
import sys
sys.path.insert(0, sys.argv.pop(1))
import torch
import child
from fairchem.core.trainers.base_trainer import BaseTrainer
validate = BaseTrainer.validate
def seeded(self, *args, **kwargs):
    torch.manual_seed(0)
    return validate(self, *args, **kwargs)
BaseTrainer.validate = seeded
child.main(sys.argv[1:])
"""


def _env() -> dict:
    from trainers.fairchem.env import child_env

    extra = {"OMP_NUM_THREADS": "1"}
    if os.environ.get("MLIP_FAIRCHEM_TEST_PYTHONPATH"):
        extra["PYTHONPATH"] = os.environ["MLIP_FAIRCHEM_TEST_PYTHONPATH"]
    return child_env(extra)


def write_config(path: Path, data: dict, args, n_train: int, config: Path = EQV2) -> Path:
    from trainers.fairchem.config import dump_config
    from trainers.fairchem.derive import derive_config

    derived = derive_config(str(config), mode="train", data={k: str(v) for k, v in data.items()},
                            backend_args=[*args, PER_STRUCTURE_PBC], env={}, n_train=n_train)
    path.write_text(dump_config(derived.config, "test"))
    return path


class Run:
    def __init__(self, out: subprocess.CompletedProcess, ckdir: Path) -> None:
        self.out, self.ckdir = out, ckdir
        self.text = out.stdout + out.stderr

    @property
    def checkpoint(self) -> Path:
        return self.ckdir / "checkpoint.pt"


def train(python: str, root: Path, name: str, config: Path, *options: str, checkpoint=None, native=False,
          seeded_validation=False, serve=False) -> Run:
    """One FairChem training in ``root/name``: ``child.py run [options] -- ...`` (or the same command sent to an
    early-started ``child.py serve``, or FairChem's own CLI)."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    args = ["--mode", "train", "--config-yml", str(config), "--run-dir", str(run_dir), "--timestamp-id", "t",
            "--seed", "0", "--cpu", *(["--checkpoint", str(checkpoint)] if checkpoint else [])]
    script = ["-c", SEEDED_VALIDATION, str(CHILD.parent)] if seeded_validation else [str(CHILD)]
    cmd = [python, "-c", NATIVE, *args] if native else [python, *script, "run", *options, "--", *args]
    if serve:
        command = json.dumps({"argv": cmd[2:], "cwd": str(run_dir)}) + "\n"
        cmd = [python, str(CHILD), "serve"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=run_dir, timeout=900,
                         input=command if serve else None)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return Run(out, run_dir / "checkpoints" / "t")


def _module(key: str) -> str:
    """The model's top-level module of a state_dict key (FairChem's trainer wraps the model in DDP: 'module.')."""
    return key.removeprefix("module.").split(".")[0]


def inspect(python: str, ckpt: Path, other: Path | None = None) -> dict:
    out = subprocess.run([python, "-c", INSPECT, str(ckpt), *([str(other)] if other else [])], capture_output=True,
                         text=True, env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ launcher side: no FairChem needed

def test_run_options_parse_and_refuse_bad_values(capsys):
    post, mirror, opts, rest = child.parse_run_args(
        ["--post", "P", "--accum-steps", "8", "--freeze", "head_only", "--early-stop", "3", "--log-every", "5",
         "--progress-log", "logs/train.log", "--mirror", "M", "--", "--mode", "train"])
    assert (post, mirror, rest) == ("P", "M", ["--mode", "train"])
    assert (opts.accum_steps, opts.freeze, opts.early_stop, opts.log_every, opts.progress_log) == \
        (8, "head_only", 3, 5, "logs/train.log")
    _, _, opts, rest = child.parse_run_args(["--freeze", "none", "--mode", "train"])
    assert opts.freeze is None and opts.accum_steps == 1 and rest == ["--mode", "train"]
    for bad, needle in ((["--accum-steps", "0"], "--accum-steps must be a whole number >= 1"),
                        (["--early-stop", "1.5"], "--early-stop must be a whole number >= 1"),
                        (["--freeze", "all"], "--freeze must be one of none, head_only"),
                        (["--log-every"], "--log-every needs a value")):
        with pytest.raises(SystemExit) as exc:
            child.parse_run_args(bad)
        assert exc.value.code == 2
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    with pytest.raises(SystemExit):
        patches.head_modules("painn")
    line = capsys.readouterr().out.strip()
    assert line == ("error: --freeze head_only: no output head is defined for model 'painn' "
                    "(only for equiformer_v2 and gemnet_oc)")


def test_progress_lines_become_train_records(tmp_path):
    line = "step 40 | epoch 1.250 | loss 3.1 | lr 2.500e-03 | 85.2 structures/s"
    assert parse_progress(line) == {"step": 40, "epoch": 1.25, "loss": 3.1, "lr": 0.0025, "structures_per_s": 85.2}
    assert parse_progress("step 40 | epoch 1.250 | loss 3.1") is None
    tap = MetricsTap(tmp_path / "metrics.jsonl", "train-x")
    tap("2026-11-26 11:40:02 (INFO): Evaluating on val.")
    tap(line)  # a progress line between does not take the val metrics' split
    tap("2026-11-26 11:40:03 (INFO): energy_mae: 0.9000, forces_mae: 0.3500, loss: 40.0000, epoch: 1.0000")
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r.get("kind")) for r in recs] == [("train", "progress"), ("val", None)]
    assert recs[0]["step"] == 40 and recs[0]["structures_per_s"] == 85.2 and recs[0]["run"] == "train-x"


# ------------------------------------------------------------------ real FairChem training

@pytest.fixture(scope="module")
def small(fairchem_python, fairchem_fixtures, demo_data, tmp_path_factory):
    """16 train / 4 val demo structures, and 8 train structures of 8 atoms each."""
    from data.lmdb_dataset import LmdbDataset
    from trainers.fairchem.subset import write_subset

    root = tmp_path_factory.mktemp("fc-hooks")
    ds = LmdbDataset(demo_data["train"])
    eight = [i for i in range(len(ds)) if len(ds[i].numbers) == 8][:8]
    assert len(eight) == 8
    return {
        "root": root,
        "data": {"train": write_subset(demo_data["train"], np.arange(16), root / "train16.lmdb"),
                 "val": write_subset(demo_data["val"], np.arange(4), root / "val4.lmdb")},
        "eight": {"train": write_subset(demo_data["train"], eight, root / "train8x8.lmdb")},
    }


@pytest.fixture(scope="module")
def one_epoch(small, fairchem_python):
    """One epoch of 8 batches of 2, by FairChem's own loop and by ours with progress lines every 2 updates."""
    root = small["root"]
    cfg = write_config(root / "one-epoch.yml", small["data"], ["--optim.max_epochs=1", "--optim.batch_size=2",
                                                               "--optim.eval_every=8"], 16)
    native = train(fairchem_python, root, "native", cfg, native=True)
    progress = root / "logs" / "train.log"
    ours = train(fairchem_python, root, "ours", cfg, "--log-every", "2", "--progress-log", str(progress))
    return {"config": cfg, "native": native, "ours": ours, "progress": progress}



@pytest.mark.slow
@pytest.mark.fairchem
def test_our_loop_trains_as_fairchems_and_logs_progress(one_epoch, fairchem_python):
    ours = one_epoch["ours"]
    info = inspect(fairchem_python, ours.checkpoint, one_epoch["native"].checkpoint)
    assert info["changed"] == []  # bit for bit the weights FairChem's own loop trains
    assert info["step"] == 8 and info["optimizer_steps"] == [8]
    assert info["mlip_launch"] == {"accum_steps": 1, "bad_validations": 0}

    lines = [x for x in ours.out.stdout.splitlines() if x.startswith("step ")]
    assert one_epoch["progress"].read_text().splitlines() == lines
    parsed = [parse_progress(x) for x in lines]
    assert [p["step"] for p in parsed] == [2, 4, 6, 8]
    assert [p["epoch"] for p in parsed] == [0.25, 0.5, 0.75, 1.0]
    assert all(np.isfinite(p["loss"]) and p["loss"] > 0 and p["lr"] == 0.0025 and p["structures_per_s"] > 0
               for p in parsed)
    assert "Evaluating on val." in ours.text and "Total time taken" in ours.text  # FairChem's own logging stays


@pytest.mark.slow
@pytest.mark.fairchem
def test_accumulation_steps_the_optimizer_once_per_group(small, fairchem_python):
    # eval_every (and so checkpoint_every) count optimizer updates: 1 here, as an epoch has only 1 or 3 of them
    cfg = write_config(small["root"] / "accum.yml", small["data"], ["--optim.max_epochs=1", "--optim.batch_size=2",
                                                                    "--optim.eval_every=1"], 16)
    run8 = train(fairchem_python, small["root"], "accum8", cfg, "--accum-steps", "8", serve=True)
    assert "FairChem interpreter started early" in run8.out.stdout  # the same options through serve
    by8 = inspect(fairchem_python, run8.checkpoint)
    assert by8["step"] == 1 and by8["optimizer_steps"] == [1]  # 1/8 of the 8 updates of accum 1
    assert by8["epoch"] == 1.0 and by8["mlip_launch"]["accum_steps"] == 8
    run3 = train(fairchem_python, small["root"], "accum3", cfg, "--accum-steps", "3")
    by3 = inspect(fairchem_python, run3.checkpoint)
    assert by3["step"] == 3 and by3["optimizer_steps"] == [3]  # 3 + 3 + 2: the short last group steps too


@pytest.mark.slow
@pytest.mark.fairchem
def test_an_accumulated_update_equals_one_larger_batch(small, fairchem_python):
    """SGD without clipping, 8 structures of 8 atoms: 4 micro-batches of 1 per update = batches of 4."""
    root = small["root"]
    common = ["--optim.max_epochs=1", "--optim.optimizer=SGD", "--optim.optimizer_params={}",
              "--optim.lr_initial=0.002", "--optim.clip_grad_norm=0",
              "--optim.eval_every=2"]  # (no val set) checkpoints every 2 updates
    big = write_config(root / "batch4.yml", small["eight"], [*common, "--optim.batch_size=4"], 8)
    micro = write_config(root / "batch1.yml", small["eight"], [*common, "--optim.batch_size=1"], 8)
    a = train(fairchem_python, root, "batch4", big)
    b = train(fairchem_python, root, "batch1x4", micro, "--accum-steps", "4")
    c = train(fairchem_python, root, "batch1", micro)
    same = inspect(fairchem_python, b.checkpoint, a.checkpoint)
    assert same["step"] == 2 and same["max_rel_diff"] < 1e-4, same
    apart = inspect(fairchem_python, c.checkpoint, a.checkpoint)  # 8 updates of 1: a different model
    assert apart["step"] == 8 and apart["max_rel_diff"] > 1e-2, apart  # (an unscaled sum of 4 is ~10 apart)


@pytest.mark.slow
@pytest.mark.fairchem
def test_head_only_changes_only_the_output_head(one_epoch, small, fairchem_python):
    root = small["root"]
    init = root / "init-weights.pt"
    subprocess.run([fairchem_python, str(CHILD), "weights-only", str(one_epoch["ours"].checkpoint), str(init)],
                   check=True, env=_env(), timeout=300)
    run = train(fairchem_python, root, "head-only", one_epoch["config"], "--freeze", "head_only", checkpoint=init)
    m = re.search(r"\[mlip-launch\] freeze head_only: training (\d+) of (\d+) parameters \(energy_block, force_block\)",
                  run.out.stdout)
    assert m and 0 < int(m.group(1)) < int(m.group(2)), run.out.stdout[-3000:]
    info = inspect(fairchem_python, run.checkpoint, init)
    changed = {_module(k) for k in info["changed"]}
    assert changed == {"energy_block", "force_block"}, info["changed"]  # both heads trained, nothing else
    assert info["optimizer_numel"] == int(m.group(1))  # the optimizer holds the head's parameters only


@pytest.mark.slow
@pytest.mark.fairchem
def test_head_modules_name_real_fairchem_modules(fairchem_python, fairchem_fixtures, tmp_path):
    """The head of each model, built from FairChem's test configs: present, and a small part of the model."""
    from trainers.fairchem.config import load_config

    models = {name: load_config(str(path))["model"] for name, path in (("equiformer_v2", EQV2), ("gemnet_oc", GEMNET))}
    script = (
        "import json, sys\nsys.path.insert(0, sys.argv[1])\nimport patches\n"
        "from fairchem.core.common.registry import registry\nfrom fairchem.core.common.utils import setup_imports\n"
        "setup_imports()\nout = {}\n"
        "for name, cfg in json.loads(sys.argv[2]).items():\n"
        "    cfg = dict(cfg); cfg.pop('name')\n"
        "    model = registry.get_model_class(name)(**cfg)\n"
        "    n_head, n_all, found = patches.freeze_to_head(model, name)\n"
        "    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)\n"
        "    out[name] = [n_head, n_all, found, trainable]\n"
        "print(json.dumps(out))\n")
    out = subprocess.run([fairchem_python, "-c", script, str(CHILD.parent), json.dumps(models)], capture_output=True,
                         text=True, env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["equiformer_v2"][2] == ["energy_block", "force_block"]
    assert res["gemnet_oc"][2] == ["out_mlp_E", "out_energy", "out_mlp_F", "out_forces"]
    for n_head, n_all, _, trainable in res.values():
        assert 0 < trainable <= n_head < n_all / 2


@pytest.mark.slow
@pytest.mark.fairchem
def test_early_stop_after_validations_without_improvement(small, fairchem_python):
    """lr 0: the first validation sets the best, the next ones tie; --early-stop 2 ends the run after the third."""
    root = small["root"]
    cfg = write_config(root / "early.yml", small["data"], ["--optim.max_epochs=10", "--optim.batch_size=4",
                                                           "--optim.eval_every=4", "--optim.lr_initial=0"], 16)
    progress = root / "early-train.log"
    run = train(fairchem_python, root, "early", cfg, "--early-stop", "2", "--log-every", "4",
                "--progress-log", str(progress), seeded_validation=True)
    stops = [x for x in run.out.stdout.splitlines() if "early stop" in x]
    assert len(stops) == 1 and "2 validations in a row without a better val forces_mae" in stops[0]
    assert "stopping at step 12, epoch 3.000" in stops[0]
    assert run.text.count("Evaluating on val.") == 3
    assert progress.read_text().splitlines()[-1] == stops[0]
    info = inspect(fairchem_python, run.checkpoint)
    assert info["step"] == 12 and info["epoch"] == 3.0 and info["mlip_launch"]["bad_validations"] == 2
    assert (run.ckdir / "best_checkpoint.pt").is_file()


@pytest.mark.slow
@pytest.mark.fairchem
def test_resume_with_another_accumulation_keeps_the_position(one_epoch, small, fairchem_python):
    """A checkpoint of 8 updates of 1 batch, resumed with 4 batches per update: epoch 1 done is step 2 now."""
    cfg = write_config(small["root"] / "two-epochs.yml", small["data"], ["--optim.max_epochs=2", "--optim.batch_size=2",
                                                                         "--optim.eval_every=2"], 16)
    run = train(fairchem_python, small["root"], "resumed", cfg, "--accum-steps", "4",
                checkpoint=one_epoch["ours"].checkpoint)
    assert "this run 4: step 8 -> 2 (epoch 1.000)" in run.out.stdout
    info = inspect(fairchem_python, run.checkpoint)
    assert info["step"] == 4 and info["epoch"] == 2.0 and info["optimizer_steps"] == [8 + 2]
    assert info["mlip_launch"]["accum_steps"] == 4

