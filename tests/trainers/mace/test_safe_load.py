"""Model files that would run code when unpickled are refused (preflight and job), and real ones still load.

Each payload's ``__reduce__`` writes a marker file when unpickled by plain pickle; every test asserts the
marker never appears.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from launcher.core.errors import ConfigError

from .conftest import make_spec


class _Touch:
    """Unpickled by plain pickle, it creates ``marker`` (through os.system, a real code path)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _payload_model(path: Path, marker: Path) -> Path:
    import torch

    torch.save({"model": _Touch(marker)}, path)
    return path


def _small_model(path: Path, **attrs) -> Path:
    """A real ScaleShiftMACE (resolved config, no data needed) saved as a whole module, ``attrs`` set on it."""
    import torch

    from trainers.mace.model_config import build_model, check_model_config

    cfg = check_model_config({"model": "ScaleShiftMACE", "num_channels": 4, "max_L": 1, "max_ell": 2, "correlation": 2,
                              "num_interactions": 2, "r_max": 4.0, "num_radial_basis": 4, "radial_MLP": [8],
                              "MLP_irreps": "4x0e", "atomic_numbers": [13, 29, 79], "atomic_energies": [-1.0, -2.0, -3.0],
                              "avg_num_neighbors": 5.0, "atomic_inter_scale": [1.0], "atomic_inter_shift": [0.0]},
                             source="test")
    model = build_model(cfg)
    for k, v in attrs.items():
        setattr(model, k, v)
    torch.save(model, path)
    return path


def _launch(argv, monkeypatch, cwd):
    from tests.launcher.conftest import run_launch

    return run_launch(list(argv), monkeypatch, cwd=cwd)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("task", ["evaluate", "finetune", "export"])
@pytest.mark.parametrize("dry", [True, False])
@pytest.mark.parametrize("via", ["model_in", "manifest"])
def test_a_payload_model_is_refused_naming_its_class(task, dry, via, tiny_data, tiny_model_json, tmp_path, monkeypatch):
    import time

    marker = tmp_path / "MARKER"
    model = _payload_model(tmp_path / "payload.model", marker)
    source = [f"model_in={model}"]
    if via == "manifest":     # the manifest names the payload with its true sha256
        manifest = tmp_path / "manifest.json"
        manifest.write_text(json.dumps({"manifest_version": 1, "backend": "mace", "model": {},
                                        "weights": {"path": model.name, "sha256": _sha256(model)}}))
        source = [f"model.manifest={manifest}"]
    argv = ["backend=mace", f"task={task}", "device=cpu", f"run_dir={tmp_path / 'run'}", f"dry_run={str(dry).lower()}",
            f"data.train={tiny_data['train']}", f"data.val={tiny_data['val']}", f"data.test={tiny_data['test']}",
            f"train.input_json={tiny_model_json}", *source]
    t0 = time.time()
    code, _out, err = _launch(argv, monkeypatch, tmp_path)
    assert code == 2, err
    assert time.time() - t0 < 30     # generous: the machine is shared; the scan itself takes milliseconds
    lines = [line for line in err.strip().splitlines() if "posix.system" in line]
    assert lines and "not on the allow-list" in lines[0] and "data.trust_pickles=true" in lines[0], err
    assert ("model.manifest:" if via == "manifest" else "model_in:") in lines[0]
    if err.strip().count("\n") == 0:
        assert err.startswith("error: ")
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


def test_the_job_refuses_a_payload_even_without_preflight(tiny_data, tmp_path):
    from launcher.job import run_job

    marker = tmp_path / "MARKER"
    model = _payload_model(tmp_path / "payload.model", marker)
    for task in ("evaluate", "export"):
        spec = make_spec(tmp_path / task, tiny_data, task=task, model_in=str(model))
        with pytest.raises(ConfigError, match=r"model_in: .*payload\.model refers to posix\.system"):
            run_job(spec, echo=lambda *_: None)
        assert not (tmp_path / task).exists()      # a fresh run_dir refused at start is left as it was
    assert not marker.exists()


def test_a_real_model_loads_through_the_allow_list_with_its_weights(tmp_path):
    import torch

    from trainers.mace.model_io import load_mace_module

    path = _small_model(tmp_path / "small.model")
    ref = torch.load(path, weights_only=False)
    got = load_mace_module(path)
    want = ref.state_dict()
    assert set(got.state_dict()) == set(want)
    assert all(torch.equal(v, want[k].to(v.dtype)) for k, v in got.state_dict().items())


def test_unlisted_classes_load_only_with_the_opt_in(tmp_path, monkeypatch):
    from fractions import Fraction

    from trainers.mace.model_io import load_mace_module

    path = _small_model(tmp_path / "noted.model", note=Fraction(1, 3))
    with pytest.raises(ConfigError, match=r"model_in: .*refers to fractions\.Fraction.*data\.trust_pickles=true"):
        load_mace_module(path)
    assert load_mace_module(path, trust=True).note == Fraction(1, 3)


def _saved_with(tmp_path: Path, name: str, reducer) -> Path:
    import torch

    class Crafted:
        def __reduce__(self):
            return reducer()

    path = tmp_path / name
    torch.save({"model": Crafted()}, path)
    return path


def test_allowed_names_that_could_run_code_do_not(tmp_path):
    """reduce_graph_module would exec stored source; getattr could reach any torch function; a module class
    called from the file would run its constructor: all listed, none of them runs anything."""
    import torch
    import torch.fx.graph_module as gm

    from trainers.mace.safe_load import load_model_file

    marker = tmp_path / "MARKER"
    code = f"\nimport os\nos.system('touch {marker}')\n"
    graph = _saved_with(tmp_path, "graph.pt", lambda: (gm.reduce_graph_module, ({"_code": code}, code)))
    obj = load_model_file(graph)
    assert isinstance(obj["model"], torch.nn.Module) and not marker.exists()

    reach = _saved_with(tmp_path, "getattr.pt", lambda: (getattr, (torch._C._VariableFunctionsClass, "from_file")))
    with pytest.raises(ConfigError, match="getattr.*from_file.*not allowed"):
        load_model_file(reach)
    gate = _saved_with(tmp_path, "gate.pt", lambda: (getattr, (torch._C._VariableFunctionsClass, "tanh")))
    assert load_model_file(gate)["model"] is torch.tanh

    from mace.modules.radial import BesselBasis

    called = _saved_with(tmp_path, "called.pt", lambda: (BesselBasis, (4.0,)))
    with pytest.raises(ConfigError, match="BesselBasis may only be restored from its state"):
        load_model_file(called)


def test_stored_torchscript_of_e3nn_is_never_loaded(tmp_path):
    """e3nn keeps compiled TorchScript as bytes (``__codegen__``): bytes that are not TorchScript at all load
    (they are dropped, never handed to torch.jit.load), and the weights still come back."""
    import torch

    from trainers.mace.model_io import load_mace_module

    path = _small_model(tmp_path / "small.model")
    model = torch.load(path, weights_only=False)
    conv = model.interactions[0].conv_tp
    state = conv.__getstate__()
    assert state.get("__codegen__"), "e3nn no longer stores TorchScript: revisit safe_load"
    conv.__getstate__ = lambda: {**state, "__codegen__": {k: b"not torchscript" for k in state["__codegen__"]}}
    torch.save(model, path)
    loaded = load_mace_module(path).state_dict()
    want = model.state_dict()
    assert set(loaded) == set(want)
    assert all(torch.equal(v, want[k].to(v.dtype)) for k, v in loaded.items())
