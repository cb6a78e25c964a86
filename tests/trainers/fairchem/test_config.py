"""Loading FairChem configs outside the FairChem repo: includes, relative data files, overrides."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from launcher.core.errors import ConfigError
from trainers.fairchem.config import find_relative, load_config, parse_value, split_backend_args

from .conftest import OC22, TEST_CONFIGS


def test_includes_are_merged_from_a_repo_style_relative_path(fairchem_fixtures):
    cfg = load_config(OC22 / "gemnet-oc" / "gemnet_oc.yml")
    assert "includes" not in cfg
    assert cfg["trainer"] == "ocp"                         # from base.yml
    assert cfg["dataset"]["train"]["format"] == "oc22_lmdb"
    assert cfg["model"]["name"] == "gemnet_oc"             # from the including file
    assert cfg["loss_functions"][1]["forces"]["coefficient"] == 100
    assert cfg["optim"]["lr_initial"] == pytest.approx(5e-4)


def test_scale_file_resolves_by_searching_parent_folders(fairchem_fixtures):
    cfg = load_config(TEST_CONFIGS / "test_gemnet_oc.yml")
    scale = cfg["model"]["scale_file"]
    assert os.path.isabs(scale) and Path(scale).is_file()
    assert scale.endswith("configs/oc20/s2ef/all/gemnet/scaling_factors/gemnet-oc.pt")


def test_lin_ref_resolves_and_unfound_paths_stay_as_written(fairchem_fixtures):
    cfg = load_config(OC22 / "equiformer_v2" / "equiformer_v2_N@18_L@6_M@2_e4_f100_121M.yml")
    assert Path(cfg["dataset"]["train"]["lin_ref"]).is_file()
    assert cfg["dataset"]["train"]["src"] == "data/oc22/s2ef/train"   # not on this machine: untouched
    assert cfg["model"]["norm_type"] == "layer_norm_sh"


def test_include_relative_to_the_including_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.yml").write_text("optim: {lr_initial: 0.1, batch_size: 4}\nmodel: {name: x}\n")
    (tmp_path / "run.yml").write_text("includes: [sub/base.yml]\noptim: {lr_initial: 0.2}\n")
    cfg = load_config(tmp_path / "run.yml")
    assert cfg["optim"] == {"lr_initial": 0.2, "batch_size": 4}


@pytest.mark.parametrize("files,needle", [
    ({"a.yml": "includes: [b.yml]\n", "b.yml": "includes: [a.yml]\n"}, "cyclic includes"),
    ({"a.yml": "includes: [nowhere.yml]\n"}, "'nowhere.yml' not found"),
    ({"a.yml": "model: {name: x}\nmodel: {name: y}\n"}, "duplicate key 'model'"),
    ({"a.yml": "includes: base.yml\n"}, "must be a list"),
    ({"a.yml": "- 1\n- 2\n"}, "expected a mapping"),
])
def test_bad_configs_are_one_line_errors_naming_the_file(tmp_path, files, needle):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "a.yml")
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith("train.config_yml")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.yml")


def test_find_relative_walks_up(tmp_path):
    (tmp_path / "configs" / "x").mkdir(parents=True)
    (tmp_path / "configs" / "x" / "s.pt").write_bytes(b"")
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert find_relative("configs/x/s.pt", deep) == (tmp_path / "configs" / "x" / "s.pt").resolve()
    assert find_relative("configs/none.pt", deep) is None


def test_backend_args_split_into_overrides_and_flags():
    overrides, passthrough = split_backend_args(
        ["--model.num_layers=1", "--optim.max_epochs=2", "--amp", "--print-every", "5", "--optim.x=[1, 2]",
         "--logger.name=tensorboard"])
    assert overrides == [("model.num_layers", 1), ("optim.max_epochs", 2), ("optim.x", [1, 2]),
                         ("logger.name", "tensorboard")]
    assert passthrough == ["--amp", "--print-every", "5"]
    assert parse_value("1e-3") == pytest.approx(1e-3) and parse_value("AdamW") == "AdamW"
