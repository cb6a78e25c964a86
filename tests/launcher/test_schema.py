"""The schema: keys, types and cross-field rules, and the generated reference."""
from __future__ import annotations

import re

import pytest

from launcher.core.errors import ConfigError, ConfigErrors
from launcher.core.schema import RunSpec, check, leaf_keys, spec_from_dict, validate


def _spec(**kw) -> RunSpec:
    base = {"run_dir": "/tmp/r", "device": "cpu", "data": {"train": "/d/t.lmdb"}, "train": {"input_json": "/m.json"}}
    for k, v in kw.items():
        node = base
        parts = k.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return spec_from_dict(base)


def test_valid_minimal_mace_train():
    assert validate(_spec()) == []


def test_unknown_key_lists_valid_keys_and_suggests():
    with pytest.raises(ConfigError) as e:
        spec_from_dict({"train": {"lrr": 1}})
    msg = str(e.value)
    assert "train.lrr" in msg and "did you mean 'lr'" in msg and "weight_decay" in msg
    assert "\n" not in msg


def test_unknown_top_level_key():
    with pytest.raises(ConfigError, match="unknown key 'epochs'.*valid keys at the top level"):
        spec_from_dict({"epochs": 3})


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match="train.epochs"):
        spec_from_dict({"train": {"epochs": "many"}})


def test_mapping_required():
    with pytest.raises(ConfigError, match="expected a mapping"):
        spec_from_dict(["x"])  # type: ignore[arg-type]


@pytest.mark.parametrize("kw, key", [
    ({"backend": "torchani"}, "backend"),
    ({"task": "fly"}, "task"),
    ({"device": "gpu"}, "device"),
    ({"run_dir": None}, "run_dir"),
    ({"train__epochs": 0}, "train.epochs"),
    ({"train__lr": 0.0}, "train.lr"),
    ({"train__optimizer": "lbfgs"}, "train.optimizer"),
    ({"train__cycle_steps": 5}, "train.drop_last"),
    ({"train__scheduler_step_unit": "cycle"}, "train.scheduler_step_unit"),
    ({"train__ema_decay": 1.0}, "train.ema_decay"),
    ({"train__early_stop_factor": 0.0}, "train.early_stop_factor"),
    ({"train__early_stop_factor": -1.0}, "train.early_stop_factor"),
    ({"train__patience": 0}, "train.patience"),
    ({"device": "cuda:"}, "device"),
    ({"device": "cuda:-1"}, "device"),
    ({"device": "cuda:x"}, "device"),
    ({"device": "cuda:01"}, "device"),
    ({"device": "cpu:0"}, "device"),
    ({"data__format": "extxyz"}, "data.format"),
    ({"train__freeze": "head_only"}, "train.freeze"),
    ({"train__input_json": None}, "train.input_json"),
    ({"task": "finetune"}, "model_in"),
    ({"task": "export"}, "model_in"),
    ({"task": "evaluate", "model_in": "/m.model"}, "data.test"),
    ({"backend": "gemnet_oc", "train__input_json": None}, "train.config_yml"),
    ({"train__config_yml": "/c.yml"}, "train.config_yml"),
    ({"data__val_indices__max_samples": 0}, "data.val_indices.max_samples"),
    ({"train__progress_bar": "maybe"}, "train.progress_bar"),
])
def test_cross_field_rules(kw, key):
    from launcher.backends import backend_problems

    spec = _spec(**kw)
    problems = validate(spec) + backend_problems(spec)  # the generic rules, then the backend's own
    assert problems, kw
    assert any(p.startswith(key) for p in problems), problems


@pytest.mark.parametrize("kw", [
    {"train__early_stop_factor": 1.0}, {"train__early_stop_factor": 0.5}, {"train__early_stop_factor": 2.5},
    {"train__patience": 1, "train__early_stop_factor": 3.0}, {"train__patience": 7},
    {"device": "cuda"}, {"device": "cuda:0"}, {"device": "cuda:12"}, {"device": "auto"},
    {"data__format": "lmdb"},
])
def test_accepted_values(kw):
    assert validate(_spec(**kw)) == []


def test_bad_data_format_is_one_line_naming_the_key_and_the_allowed_value():
    (line,) = validate(_spec(data__format="xyz"))
    assert line.startswith("data.format: 'xyz'") and "lmdb" in line and "\n" not in line


@pytest.mark.parametrize("factor, patience, evals", [
    (None, 5, None), (1.0, None, 50), (1.0, 4, 4), (2.0, 3, 6), (1.5, 5, 8), (1.1, 10, 11), (0.01, 5, 1),
])
def test_early_stop_evals_is_factor_times_patience(factor, patience, evals):
    from launcher.core.schema import early_stop_evals, plateau_patience

    t = _spec(train__early_stop_factor=factor, train__patience=patience).train
    assert early_stop_evals(t) == evals
    assert plateau_patience(t) == (50 if patience is None else patience)


def test_cuda_index():
    from launcher.core.schema import cuda_index, is_cuda

    assert [cuda_index(d) for d in ("cuda", "cuda:0", "cuda:7", "cpu", "auto", "cuda:-1")] == [None, 0, 7, None, None, None]
    assert [is_cuda(d) for d in ("cuda", "cuda:3", "cpu", "auto")] == [True, True, False, False]


def test_cycle_steps_with_drop_last_is_valid():
    assert validate(_spec(train__cycle_steps=5, train__drop_last=True)) == []


def test_progress_bar_accepts_yaml_booleans():
    assert validate(_spec(train__progress_bar=True)) == []


def test_check_lists_every_problem():
    with pytest.raises(ConfigErrors) as e:
        check(_spec(device="gpu", train__epochs=0))
    assert len(e.value.problems) == 2


def test_every_parameters_md_key_is_in_the_schema(shared_dir):
    text = (shared_dir / "spec" / "parameters.md").read_text()
    keys = set(re.findall(r"`((?:data|train|eval|model)\.[a-z_.]+)`", text))
    keys.discard("model.json")  # a file name (train.input_json), not a key
    keys |= {"backend", "task", "run_dir", "model_in", "device", "backend_python", "backend_env", "backend_args"}
    schema = set(leaf_keys())
    assert keys, "no keys parsed from parameters.md"
    assert sorted(keys - schema) == []


def test_generated_reference_is_current():
    from pathlib import Path

    from launcher.schema_docs import render

    doc = Path(__file__).resolve().parents[2] / "docs" / "schema.md"
    assert doc.read_text() == render(), "docs/schema.md is stale: python -m launcher.schema_docs > docs/schema.md"
