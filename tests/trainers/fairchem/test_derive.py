"""The config a FairChem run uses: our data, our policies, backend_args last."""
from __future__ import annotations

import pytest

from launcher.core.errors import ConfigError
from trainers.fairchem.config import missing_files
from trainers.fairchem.derive import derive_config, steps_per_epoch

from .conftest import empty_lmdbs as _lmdbs, OC22, TEST_CONFIGS

EQV2_TEST = TEST_CONFIGS / "test_equiformerv2.yml"
EQV2_121M = OC22 / "equiformer_v2" / "equiformer_v2_N@18_L@6_M@2_e4_f100_121M.yml"


def test_train_injects_data_and_keeps_the_model_unchanged(fairchem_fixtures, tmp_path):
    from trainers.fairchem.config import load_config

    data = _lmdbs(tmp_path, "train", "val")
    d = derive_config(str(EQV2_TEST), mode="train", data=data, backend_args=[], env={}, n_train=1000)
    assert d.config["dataset"] == {"train": {"src": data["train"]}, "val": {"src": data["val"]}}
    assert d.config["model"] == load_config(EQV2_TEST)["model"]
    assert d.config["logger"] == {"name": "tensorboard"}
    assert d.config["optim"]["eval_every"] == 190          # 200 steps per epoch: nothing to change


def test_oc22_config_keeps_its_dataset_settings_and_drops_wandb(fairchem_fixtures, tmp_path):
    data = _lmdbs(tmp_path, "train", "val")
    d = derive_config(str(EQV2_121M), mode="train", data=data, backend_args=["--model.num_layers=1"], env={})
    train = d.config["dataset"]["train"]
    assert train["src"] == data["train"] and train["format"] == "oc22_lmdb"
    assert train["transforms"]["normalizer"]["energy"]["stdev"] == pytest.approx(25.119809935106424)
    assert d.config["dataset"]["val"]["lin_ref"].endswith("oc22_linfit_coeffs.npz")
    assert d.config["logger"] == {"name": "tensorboard"}
    assert any("logger: tensorboard" in n for n in d.notes)
    assert d.config["model"]["num_layers"] == 1
    assert d.overridden == ["model.num_layers"]


def test_wandb_kept_when_configured(fairchem_fixtures, tmp_path):
    data = _lmdbs(tmp_path, "train")
    d = derive_config(str(EQV2_121M), mode="train", data=data, backend_args=[], env={"WANDB_API_KEY": "k"})
    assert d.config["logger"] == "wandb"
    assert "val" not in d.config["dataset"]                 # data.val unset: the config's val is dropped


def test_short_runs_validate_and_checkpoint_every_epoch(fairchem_fixtures, tmp_path):
    data = _lmdbs(tmp_path, "train", "val")
    d = derive_config(str(EQV2_TEST), mode="train", data=data, backend_args=[], env={}, n_train=64)
    assert steps_per_epoch(64, 5) == 13
    assert d.config["optim"]["eval_every"] == 13
    # an explicit backend_args value is respected
    d2 = derive_config(str(EQV2_TEST), mode="train", data=data, backend_args=["--optim.eval_every=500"], env={},
                       n_train=64)
    assert d2.config["optim"]["eval_every"] == 500


def test_same_file_for_two_splits(fairchem_fixtures, tmp_path):
    data = _lmdbs(tmp_path, "train", "val")
    d = derive_config(str(EQV2_TEST), mode="train", data={**data, "test": data["val"]}, backend_args=[], env={})
    assert "test" not in d.config["dataset"] and any("dataset.test dropped" in n for n in d.notes)
    with pytest.raises(ConfigError, match=r"data\.val: same file as data\.train"):
        derive_config(str(EQV2_TEST), mode="train", data={"train": data["train"], "val": data["train"]},
                      backend_args=[], env={})


def test_predict_reads_only_the_test_split_in_float32(fairchem_fixtures, tmp_path):
    data = _lmdbs(tmp_path, "test")
    d = derive_config(str(EQV2_121M), mode="predict", data=data, backend_args=[], env={})
    assert d.config["dataset"]["test"]["src"] == data["test"]
    assert "src" not in d.config["dataset"]["train"]       # train settings (format, transforms) only
    assert d.config["dataset"]["train"]["format"] == "oc22_lmdb"
    assert d.config["task"]["prediction_dtype"] == "float32"


def test_resume_raises_max_epochs_above_what_was_done(fairchem_fixtures, tmp_path):
    data = _lmdbs(tmp_path, "train")
    args = ["--optim.max_epochs=2"]
    d = derive_config(str(EQV2_TEST), mode="train", data=data, backend_args=args, env={}, epochs_done=1)
    assert d.config["optim"]["max_epochs"] == 2              # unfinished: finish the plan
    d = derive_config(str(EQV2_TEST), mode="train", data=data, backend_args=args, env={}, epochs_done=2)
    assert d.config["optim"]["max_epochs"] == 4              # finished: the schedule once more
    d = derive_config(str(EQV2_TEST), mode="train", data=data, backend_args=args, env={}, epochs_done=2,
                      resume_target=3)
    assert d.config["optim"]["max_epochs"] == 3              # train.epochs above what was done wins


def test_missing_scale_file_is_reported(tmp_path):
    cfg = tmp_path / "c.yml"
    cfg.write_text("model: {name: gemnet_oc, scale_file: configs/none/gemnet-oc.pt}\n"
                   "dataset: {train: {lin_ref: refs/none.npz}}\n")
    from trainers.fairchem.config import load_config

    problems = missing_files(load_config(cfg))
    assert len(problems) == 2
    assert "model.scale_file: file not found: configs/none/gemnet-oc.pt" in problems[0]
    assert "dataset.train.lin_ref" in problems[1]


def test_config_without_model_is_refused(tmp_path):
    cfg = tmp_path / "c.yml"
    cfg.write_text("optim: {batch_size: 2}\n")
    with pytest.raises(ConfigError, match="no 'model' section"):
        derive_config(str(cfg), mode="train", data={"train": str(cfg)}, backend_args=[], env={})


def test_a_validation_beyond_the_run_is_said_in_the_notes(fairchem_fixtures, tmp_path):
    """optim.eval_every from backend_args is kept; when no multiple of it falls within the run, the derived
    config says so: the run's model will be its final weights."""
    data = _lmdbs(tmp_path, "train", "val")

    def notes(every, max_epochs, done=None):
        d = derive_config(str(EQV2_TEST), mode="train", data=data, env={}, n_train=50, epochs_done=done,
                          backend_args=[f"--optim.eval_every={every}", f"--optim.max_epochs={max_epochs}"])
        assert d.config["optim"]["eval_every"] == every
        return [n for n in d.notes if n.startswith("optim.eval_every:")]

    # 50 structures, batch 5: 10 steps per epoch
    assert notes(1000, 2) == ["optim.eval_every: 1000 steps, and this run trains steps 1-20: no validation will run; "
                              "the final weights become the run's model (manifest: fairchem.weights = final)"]
    assert notes(20, 2) == [] and notes(7, 2) == []
    assert notes(21, 2, done=1) == [notes(1000, 2)[0].replace("1000", "21").replace("steps 1-20", "steps 11-20")]
    assert notes(6, 2, done=1) == []                        # step 12 validates
