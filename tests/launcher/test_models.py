"""Named models: conf/models.yaml + the cache under $MLIP_LAUNCH_CACHE/models, through both doors.

The cache is seeded with a locally built mace model (or served by a local HTTP server for the
download tests); no test needs the internet.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator, Tuple

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def mace_file(tmp_path_factory) -> Path:
    """A real (tiny) mace module saved as mace's .model files are: torch.save of the module."""
    import numpy as np
    import torch
    from mace import modules  # before e3nn: mace sets up torch.load for e3nn's constants
    from e3nn import o3

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        model = modules.ScaleShiftMACE(
            r_max=4.0, num_bessel=4, num_polynomial_cutoff=5, max_ell=1,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
            num_interactions=1, num_elements=2, hidden_irreps=o3.Irreps("4x0e"), MLP_irreps=o3.Irreps("4x0e"),
            atomic_energies=np.array([-1.0, -2.0]), avg_num_neighbors=8.0, atomic_numbers=[29, 79],
            correlation=2, gate=torch.nn.functional.silu, atomic_inter_scale=1.0, atomic_inter_shift=0.0,
        )
    finally:
        torch.set_default_dtype(old)
    path = tmp_path_factory.mktemp("built") / "tiny.model"
    torch.save(model, path)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict:
    """A private cache and an extra registry file ($MLIP_LAUNCH_MODELS), for this process and the CLIs."""
    cache = tmp_path / "cache"
    reg = tmp_path / "models.yaml"
    reg.write_text("models: {}\n")
    monkeypatch.setenv("MLIP_LAUNCH_CACHE", str(cache))
    monkeypatch.setenv("MLIP_LAUNCH_MODELS", str(reg))
    monkeypatch.delenv("MLIP_LAUNCH_OFFLINE", raising=False)
    return {"cache": cache, "registry": reg}


def _register(env: dict, name: str, url: str, sha256, backend: str = "mace", **extra) -> None:
    reg = yaml.safe_load(env["registry"].read_text())
    reg["models"][name] = {"backend": backend, "url": url, "sha256": sha256, **extra}
    env["registry"].write_text(yaml.safe_dump(reg))


def _seed(env: dict, name: str, filename: str, src: Path) -> Path:
    dest = env["cache"] / "models" / name / filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(src.read_bytes())
    return dest


def _spec(tmp_path: Path, model_in: str, **over):
    from launcher.core.schema import spec_from_dict
    from launcher.core.specio import resolve_paths

    d = {"backend": "mace", "task": "export", "run_dir": str(tmp_path / "run"), "device": "cpu",
         "model_in": model_in, **over}
    return resolve_paths(spec_from_dict(d), tmp_path)


def _resolve(tmp_path: Path, *specs) -> list:
    from launcher.models import resolve_model_names

    notes: list = []
    resolve_model_names(list(specs), [tmp_path], note=notes.append)
    return notes


@pytest.fixture
def server(tmp_path) -> Iterator[Tuple[str, Path]]:
    """A local HTTP server over a folder: the download path without the internet."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


def _closed_port_url(name: str) -> str:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused, as with no network
    return f"http://127.0.0.1:{port}/{name}"


# ------------------------------------------------------------------ the shipped registry


def test_shipped_registry_names_the_foundation_models():
    from launcher.core.plugins import backend_names
    from launcher.models import load_registry, registry_files

    reg = load_registry()
    assert registry_files()[0] == REPO / "conf" / "models.yaml"
    for name, backend in [("mace-mp-0-medium", "mace"), ("mace-mpa-0", "mace"), ("mace-omat-0", "mace"),
                          ("MACE-MH-1", "mace"), ("EquiformerV2-lE4-lF100-S2EFS-OC22", "equiformer_v2"),
                          ("GemNet-OC-S2EFS-OC22", "gemnet_oc")]:
        e = reg[name.lower()]
        assert e.backend == backend and e.url.startswith("https://"), name
        assert e.backend in backend_names()
        assert e.sha256 is None or (len(e.sha256) == 64 and int(e.sha256, 16) >= 0)
    mh = reg["mace-mh-1"]
    assert "omat_pbe" in mh.heads and mh.default_head == "omat_pbe"
    from launcher.core.schema import RunSpec

    assert RunSpec().train.head_key == mh.default_head  # nothing to set for MH-1's omat_pbe head


# ------------------------------------------------------------------ resolution from a seeded cache


def test_seeded_cache_resolves_and_file_wins_over_name(env, tmp_path, mace_file):
    cached = _seed(env, "tiny-mace", "tiny.model", mace_file)
    _register(env, "tiny-mace", "https://example.invalid/x/tiny.model", _sha(mace_file), aliases=["tiny-alias"])
    a, b = _spec(tmp_path, "tiny-mace"), _spec(tmp_path, "TINY-ALIAS")
    assert _resolve(tmp_path, a, b) == []
    assert a.model_in == b.model_in == str(cached)
    pin = json.loads(cached.with_name("tiny.model.sha256.json").read_text())
    assert pin["sha256"] == _sha(mace_file)
    # a file of that name in the folder it is resolved against is used as it is
    local = tmp_path / "tiny-mace"
    local.write_bytes(mace_file.read_bytes())
    c = _spec(tmp_path, "tiny-mace")
    _resolve(tmp_path, c)
    assert c.model_in == str(local)
    # a path with folders is not a name: preflight's own "not found" stands
    d = _spec(tmp_path, "sub/tiny-mace")
    _resolve(tmp_path, d)
    assert d.model_in == str(tmp_path / "sub" / "tiny-mace")


def test_checksum_refusal_of_a_cached_file(env, tmp_path, mace_file):
    from launcher.core.errors import ConfigError

    cached = _seed(env, "tiny-mace", "tiny.model", mace_file)
    _register(env, "tiny-mace", "https://example.invalid/tiny.model", "0" * 64)
    spec = _spec(tmp_path, "tiny-mace")
    with pytest.raises(ConfigError) as e:
        _resolve(tmp_path, spec)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("model_in: ") and str(cached) in msg
    assert _sha(mace_file) in msg and "0" * 64 in msg
    assert cached.is_file()  # the user's file is left for them to look at


def test_unpinned_entry_pins_first_use_and_refuses_a_changed_file(env, tmp_path, mace_file):
    from launcher.core.errors import ConfigError

    cached = _seed(env, "tiny-mace", "tiny.model", mace_file)
    _register(env, "tiny-mace", "https://example.invalid/tiny.model", None)
    notes = _resolve(tmp_path, _spec(tmp_path, "tiny-mace"))
    assert len(notes) == 1 and "no published sha256" in notes[0] and _sha(mace_file) in notes[0]
    assert _resolve(tmp_path, _spec(tmp_path, "tiny-mace")) == []  # pinned: no second note
    cached.write_bytes(cached.read_bytes() + b"x")
    with pytest.raises(ConfigError, match="the pin in"):
        _resolve(tmp_path, _spec(tmp_path, "tiny-mace"))


def test_backend_mismatch_unknown_name_and_head_are_one_line_each(env, tmp_path, mace_file):
    from launcher.core.errors import ConfigErrors

    _seed(env, "tiny-mace", "tiny.model", mace_file)
    _register(env, "tiny-mace", "https://example.invalid/tiny.model", _sha(mace_file))
    _register(env, "tiny-mh", "https://example.invalid/mh.model", None, heads=["a", "omat_pbe"])
    specs = [_spec(tmp_path, "tiny-mace", backend="gemnet_oc"), _spec(tmp_path, "no-such-model"),
             _spec(tmp_path, "tiny-mh", train={"head_key": "b"})]
    with pytest.raises(ConfigErrors) as e:
        _resolve(tmp_path, *specs)
    p = e.value.problems
    assert len(p) == 3 and all("\n" not in line for line in p)
    assert p[0] == "model_in: tiny-mace is a mace model; backend=gemnet_oc cannot use it (use backend=mace)"
    assert p[1].startswith(f"model_in: path not found: {tmp_path / 'no-such-model'} ")
    assert "known names: " in p[1] and "mace-mp-0-medium" in p[1] and "tiny-mace" in p[1]
    assert p[2] == "train.head_key: b is not a head of tiny-mh (heads: a, omat_pbe)"


# ------------------------------------------------------------------ downloads


def test_download_progress_sha256_and_atomic(env, tmp_path, mace_file, server, capsys):
    from launcher.core.errors import ConfigError

    url, www = server
    (www / "tiny.model").write_bytes(mace_file.read_bytes())
    _register(env, "good", f"{url}/tiny.model", _sha(mace_file))
    _register(env, "bad", f"{url}/tiny.model", "f" * 64)
    _register(env, "unpinned", f"{url}/tiny.model", None)
    s = _spec(tmp_path, "good")
    _resolve(tmp_path, s)
    dest = env["cache"] / "models" / "good" / "tiny.model"
    assert s.model_in == str(dest) and _sha(dest) == _sha(mace_file)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["tiny.model", "tiny.model.sha256.json"]
    # a download whose sha256 differs is refused and nothing is kept (no partial file either)
    with pytest.raises(ConfigError, match=r"has sha256 [0-9a-f]{64}, expected f{64} .*nothing was kept"):
        _resolve(tmp_path, _spec(tmp_path, "bad"))
    bad_dir = env["cache"] / "models" / "bad"
    assert not bad_dir.exists() or list(bad_dir.iterdir()) == []
    # no published sha256: pinned at first download, with a note
    notes = _resolve(tmp_path, _spec(tmp_path, "unpinned"))
    assert "pinned" in notes[0]
    pin = json.loads((env["cache"] / "models" / "unpinned" / "tiny.model.sha256.json").read_text())
    assert pin["sha256"] == _sha(mace_file) and "first download" in pin["source"]


def test_offline_is_one_line_naming_where_to_place_the_file(env, tmp_path, monkeypatch):
    from launcher.core.errors import ConfigError

    _register(env, "far-away", _closed_port_url("far.model"), None)
    dest = env["cache"] / "models" / "far-away" / "far.model"
    for offline in ("", "1"):
        monkeypatch.setenv("MLIP_LAUNCH_OFFLINE", offline)
        with pytest.raises(ConfigError) as e:
            _resolve(tmp_path, _spec(tmp_path, "far-away"))
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("model_in: cannot download far-away")
        assert msg.endswith(f"place it at {dest}")
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []


# ------------------------------------------------------------------ the doors


def _cli(args, env_over, cwd) -> subprocess.CompletedProcess:
    e = {**os.environ, **env_over, "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=cwd, env=e, capture_output=True, text=True, timeout=120)


def test_both_doors_resolve_before_preflight(env, tmp_path, mace_file):
    cached = _seed(env, "tiny-mace", "tiny.model", mace_file)
    _register(env, "tiny-mace", "https://example.invalid/tiny.model", _sha(mace_file))
    over = {"MLIP_LAUNCH_CACHE": str(env["cache"]), "MLIP_LAUNCH_MODELS": str(env["registry"])}
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump({"backend": "mace", "task": "export", "device": "cpu",
                                        "run_dir": "runs/a", "model_in": "tiny-mace"}))
    r = _cli([str(BIN / "launch-run"), "--config", str(run_yaml), "--dry-run"], over, tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"model_in: {cached}" in r.stdout and not (tmp_path / "runs").exists()
    r = _cli([str(BIN / "launch"), "backend=mace", "task=export", "device=cpu", "model_in=tiny-mace",
              f"run_dir={tmp_path / 'runs' / 'b'}", "dry_run=true"], over, tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"model_in: {cached}" in r.stdout
    # a Hydra sweep (-m) resolves every point
    r = _cli([str(BIN / "launch"), "-m", "backend=mace", "task=export", "device=cpu", "model_in=tiny-mace",
              "seed=0,1", "dry_run=true"], over, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(f"model_in: {cached}") == 2
    # offline, not cached: exit 2, one line naming where to put the file, nothing created
    r = _cli([str(BIN / "launch"), "backend=mace", "task=export", "device=cpu", "model_in=mace-mp-0-medium",
              f"run_dir={tmp_path / 'runs' / 'c'}"], {**over, "MLIP_LAUNCH_OFFLINE": "1"}, tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    where = env["cache"] / "models" / "mace-mp-0-medium" / "2023-12-03-mace-128-L1_epoch-199.model"
    assert lines[0].startswith("error: model_in: cannot download mace-mp-0-medium") and str(where) in lines[0]
    assert not (tmp_path / "runs").exists()
