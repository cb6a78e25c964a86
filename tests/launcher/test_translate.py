"""Plain run.yaml door and the translators; round trips over many generated specs."""
from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher.core.errors import ConfigError
from launcher.core.replay_spec import PATH_LIST_KEYS
from launcher.core.schema import CHOICES, PATH_KEYS, RunSpec, iter_fields, set_key
from launcher.core.specio import dump_run_yaml, parse_run_file, select_runs
from launcher.translate import spec_from_hydra_cfg, spec_to_experiment_yaml, spec_to_overrides

# ----------------------------------------------------------------------------------------------
# Generated specs
# ----------------------------------------------------------------------------------------------

_words = st.text(alphabet="abcXYZ019_-.", min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..") and s.lower() not in ("null", "true", "false", "nan", "inf"))
_paths = st.lists(_words, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts)).filter(
    lambda p: "/./" not in p + "/" and "/../" not in p + "/")
_tricky = st.text(alphabet="ab ,:=[]{}'\"\\*?0", min_size=1, max_size=10)


def _strategy(key: str, t: typing.Any):
    if key == "device":  # "cuda:N" stands for cuda:0, cuda:1, ...
        return st.sampled_from(["cuda", "cpu", "auto"]) | st.integers(0, 15).map(lambda n: f"cuda:{n}")
    if key in CHOICES:
        return st.sampled_from(CHOICES[key])
    if key == "run_dir":  # required in every run of a run.yaml
        return _paths
    if key in PATH_KEYS:
        return st.none() | _paths
    if key == "eval.heads":  # head name -> its data path (a path key of its own)
        return st.dictionaries(st.sampled_from(["omat_pbe", "oc22", "Default"]), _paths, max_size=3)
    if key in PATH_LIST_KEYS:   # resolved like path keys, each entry
        return st.lists(_paths, max_size=3)
    origin = typing.get_origin(t)
    args = [a for a in typing.get_args(t) if a is not type(None)]
    optional = origin is typing.Union and type(None) in typing.get_args(t)
    base = args[0] if optional else t
    borigin = typing.get_origin(base)
    if base is bool:
        s = st.booleans()
    elif base is int:
        s = st.integers(-5, 10_000)
    elif base is float:
        s = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64)
    elif base is str:
        s = _words | _tricky
    elif borigin is list:
        (inner,) = typing.get_args(base)
        s = st.lists(st.integers(0, 1000) if inner is int else (_words | _tricky), max_size=4)
    elif borigin is dict:
        s = st.dictionaries(st.sampled_from(["OMP_NUM_THREADS", "FOO", "WANDB_MODE"]), _words | _tricky, max_size=3)
    else:  # pragma: no cover
        raise AssertionError(f"no strategy for {key}: {t}")
    return st.none() | s if optional else s


FIELDS = list(iter_fields(RunSpec))


@st.composite
def specs(draw) -> RunSpec:
    spec = RunSpec()
    for key, _f, t in FIELDS:
        set_key(spec, key, draw(_strategy(key, t)))
    return spec


# ----------------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------------

@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=specs())
def test_run_yaml_round_trip(spec, tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text(dump_run_yaml(spec))
    (back,), _ = parse_run_file(f)
    assert back == spec


@pytest.fixture(scope="module")
def hydra_compose():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from launcher.resolvers import conf_dir, register
    from launcher.resolvers import register_configs

    register()
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        yield lambda overrides: compose(config_name="config", overrides=overrides)
    GlobalHydra.instance().clear()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=specs())
def test_hydra_overrides_round_trip(spec, hydra_compose):
    cfg = hydra_compose(spec_to_overrides(spec))
    assert spec_from_hydra_cfg(cfg, base_dir=Path("/")) == spec


def test_experiment_yaml_round_trip(tmp_path, hydra_compose):
    spec = RunSpec(backend="gemnet_oc", task="evaluate", run_dir="/r", model_in="/m.pt", device="cpu")
    spec.train.config_yml = "/c.yml"
    spec.data.test = "/t.lmdb"
    body = yaml.safe_load(spec_to_experiment_yaml(spec).split("\n", 1)[1])
    assert body["defaults"][:2] == [{"override /backend": "gemnet_oc"}, {"override /task": "evaluate"}]
    assert body["train"]["config_yml"] == "/c.yml"


def test_composed_config_to_run_yaml(hydra_compose, tmp_path):
    cfg = hydra_compose(["backend=mace", "task=finetune", "data.train=/x", "model_in=/y", "run_dir=/r"])
    spec = spec_from_hydra_cfg(cfg, base_dir=tmp_path)
    f = tmp_path / "run.yaml"
    f.write_text(dump_run_yaml(spec))
    (back,), _ = parse_run_file(f)
    assert back == spec and back.task == "finetune" and back.model_in == "/y"
    assert back.train.head_key == "omat_pbe"  # the backend group's default


# ----------------------------------------------------------------------------------------------
# Plain door parsing
# ----------------------------------------------------------------------------------------------

def test_single_run_relative_paths_resolve_against_the_yaml(tmp_path):
    sub = tmp_path / "exp"
    sub.mkdir()
    f = sub / "run.yaml"
    f.write_text("backend: mace\ntask: train\nrun_dir: out/a\ndata.train: ../data/train.lmdb\n"
                 "train:\n  input_json: model.json\n  epochs: 3\n")
    (spec,), launcher = parse_run_file(f)
    assert spec.run_dir == str(sub / "out" / "a")
    assert spec.data.train == str(tmp_path / "data" / "train.lmdb")
    assert spec.train.input_json == str(sub / "model.json")
    assert spec.train.epochs == 3 and launcher == {}


def test_runs_list_with_shared_defaults_and_selection(tmp_path):
    f = tmp_path / "runs.yaml"
    f.write_text(yaml.safe_dump({
        "backend": "mace", "task": "train", "device": "cpu", "train": {"epochs": 2, "input_json": "m.json"},
        "launcher": {"preset": "inprocess"},
        "runs": [
            {"name": "a", "run_dir": "ra", "train.lr": 0.001},
            {"name": "b", "run_dir": "rb", "train": {"epochs": 5}},
            {"name": "c", "run_dir": "rc", "task": "finetune", "model_in": "base.model"},
        ],
    }))
    specs_, launcher = parse_run_file(f)
    assert [s.name for s in specs_] == ["a", "b", "c"]
    assert specs_[0].train.lr == 0.001 and specs_[0].train.epochs == 2
    assert specs_[1].train.epochs == 5 and specs_[1].train.input_json == str(tmp_path / "m.json")
    assert specs_[2].model_in == str(tmp_path / "base.model")
    assert launcher == {"preset": "inprocess"}
    assert [s.name for s in select_runs(specs_, ["c", "a"], source="runs.yaml")] == ["c", "a"]
    with pytest.raises(ConfigError, match="--run: no run named zz"):
        select_runs(specs_, ["zz"], source="runs.yaml")


@pytest.mark.parametrize("text, match", [
    ("", "is empty"),
    ("- a\n- b\n", "must hold a mapping"),
    ("runs: []\n", "non-empty list"),
    ("runs:\n  - 3\n", r"runs\[0\] must be a mapping"),
    ("backend: mace\ntask: train\nruns:\n  - {run_dir: a}\n  - {run_dir: a}\n", "run names must be unique"),
    ("train: {lrr: 1}\n", "unknown key 'train.lrr'"),
    ("train: [\n", "line 2, column 1: not valid YAML"),
    ("launcher: 3\nrun_dir: x\n", "'launcher' must be a mapping"),
])
def test_bad_run_files(tmp_path, text, match):
    f = tmp_path / "run.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        parse_run_file(f)
    assert "\n" not in str(e.value)


def test_missing_run_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        parse_run_file(tmp_path / "nope.yaml")


def test_to_experiment_file_composes_to_the_same_spec(tmp_path, monkeypatch):
    """launch-run --to-experiment writes a Hydra experiment that `+experiment=NAME` composes back."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from launcher.resolvers import conf_dir, register
    from launcher.run import main
    from launcher.resolvers import register_configs

    f = tmp_path / "run.yaml"
    f.write_text("name: exp1\nbackend: gemnet_oc\ntask: train\nrun_dir: /r\ndevice: cpu\n"
                 "data: {train: /t.lmdb}\ntrain: {config_yml: /c.yml, epochs: 3}\n")
    exp_dir = tmp_path / "conf_extra" / "experiment"
    assert main(["--config", str(f), "--to-experiment", str(exp_dir)]) == 0
    register()
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config",
                      overrides=[f"hydra.searchpath=[file://{tmp_path / 'conf_extra'}]", "+experiment=exp1"])
    GlobalHydra.instance().clear()
    (expected,), _ = parse_run_file(f)
    assert spec_from_hydra_cfg(cfg, base_dir=Path("/")) == expected
