"""The backend contract (``trainers.api.BackendBase``): what every registered backend declares, the defaults a
minimal backend gets, and the refusal of a class that does not implement the contract."""
from __future__ import annotations

import sys
from pathlib import PurePosixPath

import pytest

from launcher.backends import REGISTRY, all_backends, get_backend, key_owners
from launcher.core.errors import NotImplementedBackend
from launcher.core.schema import EVAL_OBJECTIVES, OBJECTIVE_NAMES, RunSpec, leaf_keys
from trainers.api import BackendBase, prestart_of


class Minimal(BackendBase):
    def check(self, spec):
        return []

    def describe(self, ctx):
        return "minimal"

    def run(self, ctx):
        return {}


def test_every_registered_backend_keeps_the_contract():
    backends = all_backends()
    assert set(backends) == set(REGISTRY) and backends
    keys = set(leaf_keys())
    for name, b in backends.items():
        assert isinstance(b, BackendBase) and b.name == name
        assert b.objectives and set(b.objectives) <= set(OBJECTIVE_NAMES), name   # the sweep can minimise them
        assert set(b.own_keys) <= keys and set(b.key_docs) <= keys, name
        assert all(not PurePosixPath(p).is_absolute() and ".." not in PurePosixPath(p).parts
                   for p in b.model_sources), name
    assert set(EVAL_OBJECTIVES) <= set(OBJECTIVE_NAMES)
    # the vocabulary holds nothing that neither a backend nor evaluate records
    recorded = set(EVAL_OBJECTIVES).union(*(b.objectives for b in backends.values()))
    assert set(OBJECTIVE_NAMES) == recorded


def test_a_minimal_backend_gets_every_default():
    b = Minimal()
    spec = RunSpec(run_dir="/tmp/x")
    assert (b.distributed, dict(b.key_docs), b.objectives, dict(b.own_keys), b.model_globals, b.model_sources) \
        == (False, {}, (), {}, None, ())
    assert b.prestart(["backend=x"], spec) is None and b.check_launch(spec, None) == []


def test_prestart_of_never_raises():
    class Slow(Minimal):
        def prestart(self, argv, spec=None):
            raise RuntimeError("could not start early")

    assert prestart_of(Slow(), []) is None
    assert prestart_of(Minimal(), []) is None


def test_a_class_outside_the_contract_is_refused(tmp_path, monkeypatch):
    (tmp_path / "not_a_backend.py").write_text("class Duck:\n    def check(self, spec):\n        return []\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(REGISTRY, "duck", "not_a_backend:Duck")
    with pytest.raises(NotImplementedBackend, match=r"^backend=duck: not_a_backend:Duck is not a "
                                                    r"trainers.api.BackendBase subclass$"):
        get_backend("duck")
    sys.modules.pop("not_a_backend", None)


def test_own_keys_are_refused_for_every_other_backend():
    from launcher.backends import foreign_key_problems

    owners = key_owners()
    assert owners["train.config_yml"][0] == ("equiformer_v2", "gemnet_oc")
    assert owners["train.input_json"][0] == ("mace",)
    spec = RunSpec(backend="gemnet_oc", run_dir="/tmp/x", backend_args=["--a=1"])
    spec.train.input_json = "/m.json"
    assert foreign_key_problems(spec) == [
        "train.input_json: a MACE model.json, only for backend=mace; leave it unset with backend=gemnet_oc"]
    spec.train.input_json = None
    assert foreign_key_problems(spec) == []


def test_the_schema_default_backend_is_the_hydra_doors():
    import re

    from launcher.resolvers import conf_dir

    text = (conf_dir() / "config.yaml").read_text()
    assert RunSpec().backend == re.search(r"^\s*- backend: (\S+)$", text, re.M).group(1)


def test_a_run_directory_is_a_model_source_through_its_backends_model_sources(tmp_path):
    """``model_sources``: FairChem's exported checkpoint makes a run directory a model_in for FairChem only."""
    from launcher.models import _run_dir_problems
    from trainers.fairchem.backend import FairchemBackend

    run = tmp_path / "run"
    [rel] = FairchemBackend.model_sources
    (run / rel).parent.mkdir(parents=True)
    (run / rel).write_bytes(b"not read here")
    spec = RunSpec(backend="gemnet_oc", task="finetune", run_dir=str(tmp_path / "new"), model_in=str(run))
    fairchem, _ = _run_dir_problems(spec, run)
    spec.backend = "mace"
    mace, _ = _run_dir_problems(spec, run)
    assert not any("holds no model" in p for p in fairchem)
    assert mace == [f"model_in: {run} holds no model: expected a run directory holding checkpoints/checkpoint.pt or "
                    "artifacts/manifest.json, or a model file"]
