"""One schema, one meaning: every train.*/eval.* key a FairChem run is given is honoured or refused.

Keys the user set override FairChem's config (recorded in the derived file's header); keys left at the
schema defaults leave FairChem's tuned config as it is; keys FairChem has no meaning for are refused
before anything runs, one line each naming the key and the backend. Also: the config saved with a model
(our manifests, our checkpoints, the original implementation's v1 bundles) replaces train.config_yml, and
what mixed periodic/slab data needs is set from a bounded sample.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from launcher.core.layout import RunLayout
from launcher.core.schema import RunSpec
from trainers.api import JobContext
from trainers.fairchem.backend import FairchemBackend
from trainers.fairchem.config import load_config
from trainers.fairchem.data_needs import DataSample, apply_data_needs
from trainers.fairchem.derive import derive_config, early_stop_evals
from trainers.fairchem.plan import CHILD, PlanRequest
from trainers.fairchem.saved import runnable_config

from .conftest import empty_lmdbs as _lmdbs, SHARED, TEST_CONFIGS

EQV2 = TEST_CONFIGS / "test_equiformerv2.yml"
GEMNET = TEST_CONFIGS / "test_gemnet_oc.yml"
V1_BUNDLES = SHARED / "spec" / "origin-files" / "models"


@pytest.fixture(autouse=True)
def _any_interpreter(monkeypatch):
    """check() here is about keys and configs; the interpreter check has its own tests (test_command)."""
    import trainers.fairchem.env as env

    monkeypatch.setattr(env, "check_python", lambda python, backend_env=None: python)


def _spec(tmp_path, backend="equiformer_v2", config=EQV2, **kw) -> RunSpec:
    spec = RunSpec(backend=backend, task="train", run_dir=str(tmp_path / "run"), device="cpu",
                   backend_python=sys.executable)
    spec.train.config_yml = str(config) if config else None
    for name, path in _lmdbs(tmp_path, "train", "val").items():
        setattr(spec.data, name, path)
    for k, v in kw.items():
        obj = spec
        parts = k.split("__")
        for part in parts[:-1]:
            obj = getattr(obj, part)
        setattr(obj, parts[-1], v)
    return spec


def _plan(spec, n_train=64, **kw):
    mode = kw.pop("mode", "train")
    data = {"train": spec.data.train, "val": spec.data.val} if mode == "train" else {"test": spec.data.val}
    return FairchemBackend().plan(PlanRequest(spec, RunLayout.of(spec.run_dir), mode=mode, data=data, checkpoint=None,
                                              n_train=n_train, timestamp_id="train-x", **kw))


def _cfg(plan):
    return yaml.safe_load(plan.config_text)


def _header(plan):
    return [line[2:] for line in plan.config_text.splitlines() if line.startswith("# ")]


# --------------------------------------------------------------------------- overrides

def test_keys_left_at_their_defaults_leave_fairchems_config_as_it_is(fairchem_fixtures, tmp_path):
    original = load_config(EQV2)
    plan = _plan(_spec(tmp_path))
    cfg = _cfg(plan)
    assert cfg["optim"] == {**original["optim"], "eval_every": 13}  # only our one-epoch policy (64 / 5 = 13 steps)
    assert cfg["loss_functions"] == original["loss_functions"] and cfg["model"] == original["model"]
    assert "hide_eval_progressbar" not in cfg
    assert not any("(train." in n or "(data." in n for n in plan.notes)
    assert "--amp" not in plan.command and "--accum-steps" not in plan.command


def test_keys_the_user_set_override_the_config_and_are_recorded(fairchem_fixtures, tmp_path):
    spec = _spec(tmp_path, train__lr=1e-4, train__optimizer="sgd", train__batch_size=4, train__epochs=3,
                 train__weight_decay=0.01, train__energy_weight=3.0, train__force_weight=50.0,
                 train__max_grad_norm=None, train__num_workers=2, train__ema_decay=0.99, train__amp=True,
                 train__save_every=2, train__progress_bar="false", data__batch_size=7)
    plan = _plan(spec, n_train=64)
    cfg, header = _cfg(plan), _header(plan)
    o = cfg["optim"]
    assert (o["lr_initial"], o["optimizer"], o["batch_size"], o["max_epochs"]) == (1e-4, "SGD", 4, 3)
    assert o["optimizer_params"] == {"weight_decay": 0.01}          # amsgrad dropped: SGD does not take it
    assert (o["eval_batch_size"], o["num_workers"], o["ema_decay"]) == (7, 2, 0.99)
    assert "clip_grad_norm" not in o
    assert o["checkpoint_every"] == 2 * 16 and o["eval_every"] == 16   # 64 structures / batch 4 = 16 steps
    assert cfg["loss_functions"] == [{"energy": {"fn": "mae", "coefficient": 3.0}},
                                     {"forces": {"fn": "l2mae", "coefficient": 50.0}}]
    assert cfg["hide_eval_progressbar"] is True
    for line in ("optim.lr_initial: 0.0025 -> 0.0001 (train.lr)", "optim.optimizer: AdamW -> SGD (train.optimizer)",
                 "optim.batch_size: 5 -> 4 (train.batch_size)", "optim.max_epochs: 50 -> 3 (train.epochs)",
                 "optim.optimizer_params: amsgrad dropped (SGD does not take it)",
                 "loss_functions[1].forces.coefficient: 100 -> 50.0 (train.force_weight)",
                 "optim.eval_batch_size: 2 -> 7 (data.batch_size)",
                 "train.amp: autocast is CUDA-only; running on CPU without it"):
        assert line in header, (line, header)
    assert any(h.startswith("optim.checkpoint_every: unset -> 32 (train.save_every=2") for h in header)
    assert any(h.startswith("optim.clip_grad_norm: 20 -> removed") for h in header)
    assert "--cpu" in plan.command and "--amp" not in plan.command and "--seed" in plan.command


def test_legacy_loss_coefficients_and_optim_weight_decay(tmp_path):
    cfg = tmp_path / "legacy.yml"
    cfg.write_text("model: {name: equiformer_v2}\n"
                   "optim: {batch_size: 2, energy_coefficient: 4, force_coefficient: 100, weight_decay: 0.1}\n")
    spec = _spec(tmp_path, config=cfg, train__energy_weight=2.0, train__force_weight=20.0, train__weight_decay=0.0)
    o = _cfg(_plan(spec))["optim"]
    assert (o["energy_coefficient"], o["force_coefficient"]) == (2.0, 20.0)
    assert o["weight_decay"] == 0.0 and o["optimizer_params"]["weight_decay"] == 0.0   # FairChem reads optim's first


def test_amp_reaches_fairchem_on_a_gpu_run(fairchem_fixtures, tmp_path, monkeypatch):
    import trainers.fairchem.plan as plan_module

    monkeypatch.setattr(plan_module, "use_cpu", lambda spec: False)
    spec = _spec(tmp_path, device="cuda", train__amp=True)
    assert "--amp" in _plan(spec).command


def test_backend_args_have_the_last_word_over_run_keys(fairchem_fixtures, tmp_path):
    spec = _spec(tmp_path, train__epochs=3, backend_args=["--optim.max_epochs=1"])
    plan = _plan(spec)
    assert _cfg(plan)["optim"]["max_epochs"] == 1
    assert "backend_args --optim.max_epochs replaces what train.epochs set" in plan.notes


def test_patience_is_the_plateau_schedulers_or_refused(fairchem_fixtures, tmp_path):
    spec = _spec(tmp_path, train__patience=7, backend_args=["--optim.scheduler=ReduceLROnPlateau"])
    assert FairchemBackend().check(spec) == []
    plan = _plan(spec)
    assert _cfg(plan)["optim"]["patience"] == 7 and _cfg(plan)["optim"]["scheduler"] == "ReduceLROnPlateau"
    assert "optim.patience: unset -> 7 (train.patience)" in plan.notes
    spec.backend_args.append("--optim.patience=4")                   # backend_args have the last word
    assert _cfg(_plan(spec))["optim"]["patience"] == 4
    # the test config's scheduler is "Null": a patience cannot be honoured there
    problems = FairchemBackend().check(_spec(tmp_path, train__patience=7))
    assert len(problems) == 1 and problems[0].startswith("train.patience: backend=equiformer_v2 applies it to")
    assert "--optim.scheduler=ReduceLROnPlateau" in problems[0]


def test_refused_keys_one_line_each(fairchem_fixtures, tmp_path):
    spec = _spec(tmp_path, train__dtype="float32", train__scheduler="cosine", train__cycle_steps=5,
                 train__drop_last=True, train__head_key="oc22", train__progress_mininterval=2.0,
                 train__scheduler_step_unit="cycle")
    problems = FairchemBackend().check(spec)
    keys = [p.split(":", 1)[0] for p in problems]
    assert sorted(keys) == sorted(["train.scheduler", "train.cycle_steps", "train.drop_last",
                                   "train.head_key", "train.progress_mininterval", "train.scheduler_step_unit"])
    assert all("not supported by backend=equiformer_v2" in p and "\n" not in p for p in problems)
    # float32 (the Hydra door's demo setting) is what FairChem computes in: nothing to refuse
    # MACE-only input is refused as before, and a freeze other than head_only never gets here (the schema's choices)
    spec = _spec(tmp_path, train__input_json=str(tmp_path / "m.json"))
    assert FairchemBackend().check(spec)[0].startswith("train.input_json: only for backend=mace")


def test_per_head_evaluation_is_refused_in_one_line(fairchem_fixtures, tmp_path):
    spec = _spec(tmp_path, task="evaluate", model_in=str(tmp_path / "m.pt"), eval__heads={"oc22": str(tmp_path)})
    problems = [p for p in FairchemBackend().check(spec) if p.startswith("eval.heads")]
    assert problems == ["eval.heads: not supported by backend=equiformer_v2 (evaluates each head of a multi-head "
                        "MACE model; FairChem models have a single head); leave it unset"]


def test_every_schema_key_is_honoured_or_refused():
    from launcher.core.schema import leaf_keys
    from trainers.fairchem.derive import KEY_MAP, REFUSED

    run_keys = [k for k in leaf_keys() if k.split(".")[0] in ("train", "eval") or k == "data.batch_size"]
    assert [k for k in run_keys if k not in KEY_MAP and k not in REFUSED] == []


def test_child_options_for_what_fairchems_trainer_has_no_setting_for(fairchem_fixtures, tmp_path):
    spec = _spec(tmp_path, task="finetune", model_in=str(tmp_path / "m.pt"), train__accum_steps=8,
                 train__freeze="head_only", train__early_stop_factor=1.5, train__patience=3, train__log_every=5)
    plan = _plan(spec)
    layout = RunLayout.of(spec.run_dir)
    i = plan.command.index("--")
    assert plan.command[plan.command.index("run") + 1:i] == [
        "--post", str(layout.root / "fairchem" / "checkpoints" / "train-x"), "--mirror", str(layout.checkpoints),
        "--accum-steps", "8", "--freeze", "head_only", "--early-stop", "5", "--log-every", "5",
        "--progress-log", str(layout.train_log), "--logs-dir", str(layout.logs), "--run-name", spec.run_name]
    assert plan.command[0:2] == [sys.executable, str(CHILD)]
    # FairChem's step is one optimizer update: 64 structures / batch 5 = 13 batches = 2 updates of 8
    assert _cfg(plan)["optim"]["eval_every"] == 2
    # predict runs get none of them
    plan = _plan(spec, mode="predict")
    assert plan.command.index("--") == plan.command.index("run") + 1


def test_progress_lines_reach_train_log_without_log_every(fairchem_fixtures, tmp_path):
    """As the core trainer: about 20 progress lines per epoch when train.log_every is null."""
    spec = _spec(tmp_path)
    cmd = _plan(spec).command
    assert cmd[cmd.index("--log-every") + 1] == "1"           # 64 structures / batch 5: 13 updates per epoch
    assert cmd[cmd.index("--progress-log") + 1] == str(RunLayout.of(spec.run_dir).train_log)
    spec.train.log_every = 7
    cmd = _plan(spec).command
    assert cmd[cmd.index("--log-every") + 1] == "7"


def test_early_stop_without_validation_data_is_refused(fairchem_fixtures, tmp_path):
    spec = _spec(tmp_path, train__early_stop_factor=2.0)
    assert FairchemBackend().check(spec) == []
    spec.data.val = None
    assert FairchemBackend().check(spec) == ["train.early_stop_factor: needs data.val with backend=equiformer_v2 "
                                             "(it counts validations without improvement)"]


def test_early_stop_patience_from_the_key_the_config_or_50():
    spec = RunSpec()
    spec.train.early_stop_factor = 1.5
    plateau = {"optim": {"scheduler": "ReduceLROnPlateau", "patience": 4}}
    assert early_stop_evals(spec, {"optim": {}}) == 75                  # 1.5 x 50
    assert early_stop_evals(spec, plateau) == 6                          # 1.5 x the config's 4
    assert early_stop_evals(spec, {"optim": {"scheduler": "ReduceLROnPlateau"}}) == 15  # torch's default 10
    spec.train.patience = 3
    assert early_stop_evals(spec, plateau) == 5                          # ceil(1.5 x 3)
    spec.train.early_stop_factor = None
    assert early_stop_evals(spec, plateau) is None


def test_cuda_n_selects_the_gpu_for_the_child(fairchem_fixtures, tmp_path, monkeypatch):
    from trainers.fairchem.env import device_env

    assert device_env("cuda:1", {}, base={}) == {"CUDA_VISIBLE_DEVICES": "1"}
    assert device_env("cuda:1", {}, base={"CUDA_VISIBLE_DEVICES": "4,6"}) == {"CUDA_VISIBLE_DEVICES": "6"}
    assert device_env("cuda:1", {"CUDA_VISIBLE_DEVICES": "3"}, base={}) == {}
    assert device_env("cuda", {}, base={}) == {} and device_env("cpu", {}, base={}) == {}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    spec = _spec(tmp_path, device="cuda:2")
    plan = _plan(spec)
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "2" and "--cpu" not in plan.command
    spec = _spec(tmp_path, device="cuda:2", backend_env={"CUDA_VISIBLE_DEVICES": "0"})
    assert _plan(spec).env["CUDA_VISIBLE_DEVICES"] == "0"


def test_dry_run_describes_the_final_command(fairchem_fixtures, tmp_path):
    spec = _spec(tmp_path, train__epochs=2, train__accum_steps=4)
    text = FairchemBackend().describe(JobContext(spec=spec, layout=RunLayout.of(spec.run_dir)))
    first = text.splitlines()[0]
    assert "--accum-steps 4 --" in first and "--mode train" in first
    assert "# optim.max_epochs: 50 -> 2 (train.epochs)" in text


# --------------------------------------------------------------------------- what the data needs

def test_mixed_pbc_and_untagged_structures_from_a_sample(fairchem_fixtures, demo_data):
    from trainers.fairchem.subset import sample_data, sample_indices

    assert list(sample_indices(1000, None, 5)) == [0, 250, 500, 749, 999]
    assert list(sample_indices(10, [3, 1, 2], 5)) == [3, 1, 2]
    sample = sample_data([(str(demo_data["train"]), None), (str(demo_data["val"]), [0, 1])], limit=40)
    assert sample.n == 42 and sample.mixed_pbc
    cfg = load_config(GEMNET)
    notes = apply_data_needs(cfg, sample, overridden=[])
    assert cfg["model"]["use_pbc_single"] is True and cfg["model"]["qint_tags"] == [0, 1, 2]
    assert len(notes) == 2 and "mixes periodic and non-periodic" in notes[0] and "qint_tags" in notes[1]
    # what backend_args set stays; uniform data needs nothing
    cfg = load_config(GEMNET)
    assert apply_data_needs(cfg, sample, overridden=["model.use_pbc_single", "model.qint_tags"]) == []
    bulk = DataSample()
    bulk.add([True] * 3, [0, 0])
    cfg = load_config(EQV2)
    assert apply_data_needs(cfg, bulk, overridden=[]) == [] and "use_pbc_single" not in cfg["model"]


def test_demo_data_needs_no_backend_args(fairchem_fixtures, demo_data, tmp_path):
    for backend, config in (("equiformer_v2", EQV2), ("gemnet_oc", GEMNET)):
        spec = _spec(tmp_path, backend=backend, config=config, train__epochs=1)
        spec.data.train, spec.data.val = str(demo_data["train"]), str(demo_data["val"])
        model = _cfg(_plan(spec))["model"]
        assert model["use_pbc_single"] is True
        assert backend == "equiformer_v2" or model["qint_tags"] == [0, 1, 2]


# --------------------------------------------------------------------------- configs saved with a model

def test_v1_bundle_config_becomes_a_runnable_config(shared_dir):
    m = json.loads((V1_BUNDLES / "equiformer_v2_oc22" / "manifest_bundle" / "manifest.json").read_text())
    notes = []
    cfg = runnable_config(m["config"], notes)
    assert cfg["model"]["name"] == "equiformer_v2" and cfg["model"]["num_layers"] == 18
    # saved after EquiformerV2's trainer turned scheduler epochs into steps: back in epochs (0.1 warmup of 6)
    sp = cfg["optim"]["scheduler_params"]
    assert sp["epochs"] == 6 and sp["warmup_epochs"] == pytest.approx(0.1, rel=1e-4) and len(notes) == 1
    assert "model_attributes" not in cfg and "cmd" not in cfg and "slurm" not in cfg and "val_dataset" not in cfg
    assert cfg["dataset"]["train"]["target_std"] == pytest.approx(25.119809935106424)
    assert cfg["dataset"]["val"]["src"].endswith("val_id_30k")
    assert cfg["trainer"] == "equiformerv2_forces"
    d = derive_config(cfg, mode="train", data={"train": "/d/train.lmdb"}, backend_args=[], env={},
                      origin="model.manifest")
    assert d.config["dataset"]["train"]["src"] == "/d/train.lmdb" and d.config["model"]["max_neighbors"] == 20


@pytest.mark.parametrize("backend", ["equiformer_v2", "gemnet_oc"])
def test_v1_bundle_finetune_needs_no_config_yml(shared_dir, demo_data, tmp_path, backend):
    """The original's finetune_acc8_test.yaml runs: manifest + a local copy of the weights, no config_yml."""
    spec = RunSpec(backend=backend, task="finetune", run_dir=str(tmp_path / backend), device="cpu",
                   backend_python=sys.executable)
    spec.model.manifest = str(V1_BUNDLES / f"{backend}_oc22" / "manifest_bundle" / "manifest.json")
    spec.data.train, spec.data.val = str(demo_data["train"]), str(demo_data["val"])
    problems = FairchemBackend().check(spec)
    assert len(problems) == 1 and problems[0].startswith("model.manifest: ") and "set model.weights" in problems[0]
    spec.model.weights = str(tmp_path / "best_model.pt")
    Path(spec.model.weights).write_bytes(b"")
    problems = FairchemBackend().check(spec)
    assert problems and all(p.startswith("model.manifest: dataset.") and "file not found" in p for p in problems)
    assert not any("train.config_yml" in p for p in problems)
    for t, v in dict(epochs=1, batch_size=1, accum_steps=8, lr=1e-4, weight_decay=0.0, optimizer="adamw",
                     amp=True).items():
        setattr(spec.train, t, v)
    text = FairchemBackend().describe(JobContext(spec=spec, layout=RunLayout.of(spec.run_dir)))
    assert "--accum-steps 8 --" in text.splitlines()[0]
    assert f"# config: the one saved with the model, from {spec.model.manifest}" in text
    assert "# optim.lr_initial" in text and "# optim.max_epochs" in text and "# model.use_pbc_single: True" in text


def test_checkpoint_config_is_read_without_torch(tmp_path):
    import subprocess

    import torch

    from trainers.fairchem.checkpoints import read_checkpoint_config

    cfg = {"model": {"name": "gemnet_oc", "qint_tags": [0, 1, 2], "use_pbc_single": True}, "trainer": "s2ef",
           "optim": {"lr_initial": 0.1}, "dataset": {"src": "/a"}, "val_dataset": {"src": "/b"}, "cmd": {"seed": 1}}
    torch.save({"state_dict": {"w": torch.zeros(3)}, "normalizers": {}, "config": cfg}, tmp_path / "ck.pt")
    torch.save({"w": torch.zeros(3)}, tmp_path / "bare.pt")
    code = ("import sys, json; from pathlib import Path; from trainers.fairchem.checkpoints import read_checkpoint_config;"
            "print(json.dumps([read_checkpoint_config(Path(p)) for p in sys.argv[1:]]), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ck.pt"), str(tmp_path / "bare.pt")],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[3])
    configs, torch_loaded = out.stdout.rsplit(" ", 1)
    assert json.loads(configs) == [cfg, None] and torch_loaded.strip() == "False"
    r = runnable_config(read_checkpoint_config(tmp_path / "ck.pt"))
    assert r == {"model": cfg["model"], "trainer": "forces", "optim": {"lr_initial": 0.1},
                 "dataset": {"train": {"src": "/a"}, "val": {"src": "/b"}}}


def test_a_trained_model_is_rebuilt_with_its_own_model_config(fairchem_fixtures, tmp_path):
    """evaluate with config_yml: the model section comes from the checkpoint, not the config."""
    import torch

    trained = load_config(GEMNET)
    trained["model"].update(use_pbc_single=True, qint_tags=[0, 1, 2])
    torch.save({"state_dict": {}, "normalizers": {}, "config": trained}, tmp_path / "best.pt")
    spec = _spec(tmp_path, backend="gemnet_oc", config=GEMNET, task="evaluate", model_in=str(tmp_path / "best.pt"))
    spec.data.test = spec.data.val
    request = PlanRequest(spec, RunLayout.of(spec.run_dir), mode="predict", data={"test": spec.data.val},
                          checkpoint=str(tmp_path / "best.pt"))
    plan = FairchemBackend().plan(request)
    cfg = _cfg(plan)
    assert cfg["model"]["use_pbc_single"] is True and cfg["model"]["qint_tags"] == [0, 1, 2]
    assert any(n.startswith("model: as trained, from ") for n in plan.notes)
    # without config_yml the whole saved config is used; check() no longer asks for one
    spec.train.config_yml = None
    assert FairchemBackend().check(spec) == []
    plan = FairchemBackend().plan(request)
    assert _cfg(plan)["model"]["qint_tags"] == [0, 1, 2] and _cfg(plan)["optim"]["batch_size"] == 5


def test_config_yml_still_required_where_no_config_comes_with_the_model(fairchem_fixtures, tmp_path):
    import torch

    torch.save({"w": torch.zeros(2)}, tmp_path / "bare.pt")
    spec = _spec(tmp_path, config=None, task="finetune", model_in=str(tmp_path / "bare.pt"))
    problems = FairchemBackend().check(spec)
    assert len(problems) == 1 and problems[0].startswith("train.config_yml: required for backend=equiformer_v2 "
                                                         "task=finetune")
    spec = _spec(tmp_path, config=None)
    assert FairchemBackend().check(spec)[0].startswith("train.config_yml: required for backend=equiformer_v2 task=train")


@pytest.mark.parametrize("name,fairchem", [("adamw", "AdamW"), ("sgd", "SGD"), ("adam", "RAdam")])
def test_each_optimizer_is_fairchems_own(fairchem_fixtures, tmp_path, name, fairchem):
    """adamw is FairChem's AdamW (decoupled weight decay), not Adam; adam, the schema default, keeps the config's."""
    cfg = tmp_path / "radam.yml"
    cfg.write_text("model: {name: equiformer_v2}\noptim: {batch_size: 2, optimizer: RAdam}\n")
    assert _cfg(_plan(_spec(tmp_path, config=cfg, train__optimizer=name)))["optim"]["optimizer"] == fairchem


# --------------------------------------------------------------------------- every refusal, one line, before anything runs

def _unset_value(key: str, tmp_path: Path):
    """A value of ``key`` other than its schema default (what a user who sets it would give)."""
    from launcher.core.schema import CHOICES, get_key, iter_fields

    default, typ = get_key(RunSpec(), key), {k: str(t) for k, _, t in iter_fields()}[key]
    if key == "train.input_json":
        (tmp_path / "model.json").write_text("{}")
        return str(tmp_path / "model.json")
    if key == "eval.heads":   # head -> its data
        return {"oc22": str(tmp_path / "oc22.lmdb")}
    if key in CHOICES:
        return next(c for c in CHOICES[key] if c not in (default, None, "none"))
    if isinstance(default, bool) or "bool" in typ:
        return not default
    if isinstance(default, (int, float)):
        return default + 1
    return 0.5 if "float" in typ else 3 if "int" in typ else "x"


# refused keys whose other values the schema accepts only with these (each of them refused too)
COMPANIONS = {"train.scheduler_step_unit": {"train.cycle_steps": 1, "train.drop_last": True},
              "train.cycle_steps": {"train.drop_last": True}}


def _refusals():
    """(key, value or None for any other than the default, what the spec lacks) of every refusal FairChem makes."""
    from trainers.fairchem.derive import REFUSED

    return [*((k, None, None) for k in REFUSED), ("data.cache", "memory", None),
            ("train.early_stop_factor", 1.5, "data.val"), ("train.patience", 3, None)]


@pytest.mark.parametrize("backend", ["equiformer_v2", "gemnet_oc"])
@pytest.mark.parametrize("key,value,unset", _refusals(), ids=lambda v: str(v))
def test_every_refusal_is_one_line_naming_its_key(fairchem_fixtures, demo_data, tmp_path, backend, key, value, unset):
    """Through the whole preflight (generic checks and the backend's): exactly one line, naming the key and the
    backend. The interpreter is a venv's files (FairChem present, never started)."""
    from launcher.core.schema import check, set_key
    from launcher.preflight import check_sweep

    venv = tmp_path / "venv"
    for pkg in ("fairchem/core", "torch_scatter", "torch_sparse"):
        (venv / "lib" / "python3.11" / "site-packages" / pkg).mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "bin").mkdir()
    (venv / "bin" / "python").write_text("#!/bin/sh\nexit 3\n")
    (venv / "bin" / "python").chmod(0o755)
    spec = RunSpec(backend=backend, task="train", run_dir=str(tmp_path / "run"), device="cpu",
                   backend_python=str(venv / "bin" / "python"))
    spec.train.config_yml = str(EQV2 if backend == "equiformer_v2" else GEMNET)
    spec.data.train, spec.data.val = str(demo_data["train"]), str(demo_data["val"])
    if unset:
        set_key(spec, unset, None)
    set_key(spec, key, _unset_value(key, tmp_path) if value is None else value)
    if key == "eval.heads":   # only task=evaluate reads it (the schema refuses it elsewhere): a FairChem evaluate
        import torch

        spec.task, spec.model_in = "evaluate", str(tmp_path / "eqv2.pt")
        spec.eval.heads = {"oc22": str(demo_data["test"])}
        torch.save({"epoch": 1, "state_dict": {"w": torch.zeros(2)}, "config": {"model": {"name": backend}}},
                   spec.model_in)
    for other, v in COMPANIONS.get(key, {}).items():
        set_key(spec, other, v)
    problems = check_sweep([check(spec)], notes=False)
    keys = [key, *COMPANIONS.get(key, {})]
    assert len(problems) == len(keys) and not any("\n" in p for p in problems), problems
    for k in keys:
        assert [p for p in problems if p.startswith(f"{k}: ") and f"backend={backend}" in p], (k, problems)


def test_all_refusals_at_once_through_the_door(fairchem_fixtures, demo_data, tmp_path):
    """``launch ... dry_run=true`` with every refused key: exit 2 within the preflight, one line per key."""
    import os
    import subprocess
    import sys

    from trainers.fairchem.derive import REFUSED

    keys = list(REFUSED)
    values = {k: _unset_value(k, tmp_path) for k in keys}
    for companions in COMPANIONS.values():
        values.update(companions)
    args = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items() if k != "eval.heads"]
    args += [f"++eval.heads.{h}={path}" for h, path in values.get("eval.heads", {}).items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    out = subprocess.run([str(Path(sys.executable).with_name("launch")), "backend=equiformer_v2", "device=cpu",
                          f"run_dir={tmp_path / 'run'}", f"train.config_yml={EQV2}", "backend_python=" + sys.executable,
                          f"data.train={demo_data['train']}", f"data.val={demo_data['val']}", "dry_run=true", *args],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = [ln.strip() for ln in out.stderr.splitlines()[1:]]
    for key in keys:
        assert len([ln for ln in lines if ln.startswith(f"{key}: ")]) == 1, (key, out.stderr)
    assert not (tmp_path / "run").exists()
