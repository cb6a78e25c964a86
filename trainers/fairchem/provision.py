"""What a FairChem environment holds, learned from its files: no interpreter is started.

Preflight and dry runs start no program (a ``backend_python`` is whatever the user named; starting it to ask
a question would run it before the run is accepted), so everything the launcher needs to know about the env
is read here from disk:

- where ``scripts/setup-fairchem-env`` put its env: the script's own naming rule (versions parsed from the
  script, the requirements file's sha256), and whether it is complete (its stamp records that hash);
- which of the packages FairChem needs an interpreter's env has: their folders or ``*.dist-info`` in the env's
  site-packages (``pyvenv.cfg``, ``lib/python3.X/site-packages``, ``.pth`` folders, ``PYTHONPATH``);
- whether torch-scatter/torch-sparse carry CUDA kernels: the env's ``.mlip-fairchem-env.json`` (written by the
  script), else their compiled ``*_cuda*.so`` files (an env built before the record, or one we did not build).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from launcher.core.env import cache_root
from launcher.core.errors import ConfigError

SETUP_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "setup-fairchem-env"
REQ_FILE = SETUP_SCRIPT.with_name("fairchem-requirements.txt")
STAMP = ".mlip-fairchem-stamp"          # the env's hash, written last by the script: the env is complete
ENV_RECORD = ".mlip-fairchem-env.json"  # versions and cuda_ext, written by the script (absent in older envs)
CUDA_HASH_LINE = "extensions with CUDA kernels"
CUDA_FIX = "MLIP_FAIRCHEM_CUDA_EXT=1 scripts/setup-fairchem-env"
# import name -> distribution folder prefix (a wheel's or an editable install's *.dist-info)
REQUIRED: Dict[str, str] = {"fairchem.core": "fairchem_core", "torch_scatter": "torch_scatter",
                            "torch_sparse": "torch_sparse"}
EXTENSIONS = ("torch_scatter", "torch_sparse")


@functools.lru_cache(maxsize=1)
def script_versions() -> Dict[str, str]:
    """``FAIRCHEM_VERSION``, ``TORCH_SCATTER_VERSION``, ``TORCH_SPARSE_VERSION`` as the script sets them."""
    try:
        text = SETUP_SCRIPT.read_text(encoding="utf-8")
    except OSError:
        return {}
    return dict(re.findall(r'^(FAIRCHEM_VERSION|TORCH_SCATTER_VERSION|TORCH_SPARSE_VERSION)="([^"$]+)"',
                           text, flags=re.M))


def cuda_ext_wanted(environ: Optional[Mapping[str, str]] = None) -> bool:
    """``MLIP_FAIRCHEM_CUDA_EXT`` as the script reads it (0, the default, or 1)."""
    value = (os.environ if environ is None else environ).get("MLIP_FAIRCHEM_CUDA_EXT") or "0"
    if value not in ("0", "1"):
        raise ConfigError(f"backend_python: MLIP_FAIRCHEM_CUDA_EXT={value!r} in the environment; expected 0 or 1 "
                          "(it selects the FairChem env scripts/setup-fairchem-env built)")
    return value == "1"


def env_hash(cuda_ext: bool) -> Optional[str]:
    """The script's ``env_hash``: sha256 of the frozen requirements and the compiled extensions' versions."""
    v = script_versions()
    try:
        data = REQ_FILE.read_bytes()
    except OSError:
        return None
    if "TORCH_SCATTER_VERSION" not in v or "TORCH_SPARSE_VERSION" not in v:
        return None
    data += f"torch-scatter=={v['TORCH_SCATTER_VERSION']}\ntorch-sparse=={v['TORCH_SPARSE_VERSION']}\n".encode()
    if cuda_ext:
        data += f"{CUDA_HASH_LINE}\n".encode()
    return hashlib.sha256(data).hexdigest()[:12]


def is_complete(root: Path, wanted_hash: Optional[str]) -> bool:
    """The script's ``env_complete``: an executable interpreter and a stamp recording ``wanted_hash``."""
    py = root / "bin" / "python"
    if wanted_hash is None or not (py.is_file() and os.access(py, os.X_OK)):
        return False
    try:
        return (root / STAMP).read_text(encoding="utf-8").strip() == wanted_hash
    except OSError:
        return False


def _python_version_of(command: str) -> Optional[str]:
    """``3.11`` from an interpreter's file name (``python3.11``), following links; None when it does not say."""
    found = shutil.which(command)
    if not found:
        return None
    m = re.fullmatch(r"python(\d+\.\d+)", Path(os.path.realpath(found)).name)
    return m.group(1) if m else None


def provisioned_env(environ: Optional[Mapping[str, str]] = None) -> Optional[Path]:
    """The complete env ``scripts/setup-fairchem-env`` made for the current settings, or None.

    The script names it ``fairchem-<version>-py<X.Y>-<hash>`` after its base interpreter's version, which only
    running that interpreter would tell; so every complete env with the right hash is a candidate, and where
    there are several the base interpreter's version (from its file name), then the launcher's, decides.
    """
    environ = os.environ if environ is None else environ
    wanted = env_hash(cuda_ext_wanted(environ))
    if environ.get("MLIP_FAIRCHEM_ENV"):
        root = Path(environ["MLIP_FAIRCHEM_ENV"]).expanduser()
        return root if is_complete(root, wanted) else None
    version = script_versions().get("FAIRCHEM_VERSION")
    if wanted is None or version is None:
        return None
    envs = cache_root() / "envs"
    found = [p for p in sorted(envs.glob(f"fairchem-{version}-py*-{wanted}")) if is_complete(p, wanted)]
    if len(found) <= 1:
        return found[0] if found else None
    prefer = [_python_version_of(environ.get("MLIP_FAIRCHEM_BASE_PYTHON") or "python3"),
              f"{sys.version_info[0]}.{sys.version_info[1]}"]
    for py in prefer:
        for p in found:
            if py and p.name == f"fairchem-{version}-py{py}-{wanted}":
                return p
    return max(found, key=lambda p: (p / STAMP).stat().st_mtime)


# ------------------------------------------------------------------ an interpreter's env, from its files

@dataclass(frozen=True)
class EnvFacts:
    """What the files of an interpreter's env say (``site_dirs`` empty: a layout we do not recognise)."""

    python: str
    root: Optional[Path]                      # the env's prefix (a venv's folder)
    site_dirs: Tuple[Path, ...] = ()
    record: Dict[str, object] = field(default_factory=dict)   # the script's .mlip-fairchem-env.json

    @property
    def provisioned(self) -> bool:
        return self.root is not None and (self.root / STAMP).is_file()

    def find(self, module: str) -> Optional[Path]:
        """The folder (package or dist-info) that provides ``module``, or None."""
        parts = module.split(".")
        dist = REQUIRED.get(module, parts[0])
        for d in self.site_dirs:
            pkg = d.joinpath(*parts)
            if (pkg / "__init__.py").is_file() or pkg.with_suffix(".py").is_file():
                return pkg
            info = next(chain(d.glob(f"{dist}-*.dist-info"), d.glob(f"{dist}-*.egg-info"), d.glob(f"{dist}.egg-link")),
                        None)
            if info is not None:
                return info
        return None

    def missing(self) -> Optional[List[str]]:
        """The modules of :data:`REQUIRED` not found; None when the layout is not one we can read."""
        if not self.site_dirs:
            return None
        return [m for m in REQUIRED if self.find(m) is None]

    def cuda_ext(self) -> Optional[bool]:
        """torch-scatter and torch-sparse carry CUDA kernels: the script's record, else their ``*_cuda*.so``
        files; None when neither says."""
        if isinstance(self.record.get("cuda_ext"), bool):
            return bool(self.record["cuda_ext"])
        seen = []
        for name in EXTENSIONS:
            pkg = next((d / name for d in self.site_dirs if (d / name).is_dir()), None)
            if pkg is None:
                return None
            seen.append(any(pkg.glob("*_cuda*.so")) or any(pkg.glob("*_cuda*.pyd")))
        return all(seen)


def _env_root(python: Path) -> Optional[Path]:
    """The prefix whose ``lib/`` holds the interpreter's packages: the venv folder of ``.../bin/python`` (not
    followed: a venv's python links to its base), else that of the file the name links to."""
    for exe in (python, Path(os.path.realpath(python))):
        root = exe.parent.parent
        if (root / "pyvenv.cfg").is_file() or any(root.glob("lib*/python3*/site-packages")) \
                or any(root.glob("lib/python3*/dist-packages")):
            return root
    return None


def _pth_dirs(site: Path) -> List[Path]:
    """Folders named by a site dir's ``.pth`` files (development installs, a venv layered on another)."""
    out = []
    for pth in sorted(site.glob("*.pth")):
        try:
            lines = pth.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip()
            if line and not line.startswith(("#", "import ", "import\t")):
                p = (site / line) if not os.path.isabs(line) else Path(line)
                if p.is_dir():
                    out.append(p)
    return out


def _site_dirs(root: Path) -> List[Path]:
    dirs = [*sorted(root.glob("lib*/python3*/site-packages")), *sorted(root.glob("lib/python3*/dist-packages")),
            *sorted(root.glob("local/lib/python3*/dist-packages"))]
    cfg = root / "pyvenv.cfg"
    if cfg.is_file():
        text = cfg.read_text(encoding="utf-8", errors="replace")
        system = re.search(r"^include-system-site-packages\s*=\s*true\s*$", text, flags=re.M | re.I)
        home = re.search(r"^home\s*=\s*(.+?)\s*$", text, flags=re.M)
        if system and home:
            base = Path(home.group(1)).parent
            dirs += [*sorted(base.glob("lib*/python3*/site-packages")), *sorted(base.glob("lib/python3*/dist-packages"))]
    else:  # not a venv: the user's own site-packages are on its path too
        dirs += sorted(Path("~/.local/lib").expanduser().glob("python3*/site-packages"))
    return dirs


def env_facts(python: str, env: Optional[Mapping[str, str]] = None) -> EnvFacts:
    """What the files around interpreter ``python`` say; ``env`` (the process's environment) adds its
    ``PYTHONPATH``."""
    root = _env_root(Path(python))
    if root is None:
        return EnvFacts(python=python, root=None)
    extra = [Path(p) for p in str((env or {}).get("PYTHONPATH", "")).split(os.pathsep) if p]
    sites = _site_dirs(root)
    dirs: List[Path] = []
    seen = set()
    for d in [*extra, *sites, *(p for s in sites for p in _pth_dirs(s))]:
        real = os.path.realpath(d)
        if d.is_dir() and real not in seen:   # lib64 is often a link to lib
            seen.add(real)
            dirs.append(d)
    record: Dict[str, object] = {}
    try:
        loaded = json.loads((root / ENV_RECORD).read_text(encoding="utf-8"))
        record = loaded if isinstance(loaded, dict) else {}
    except (OSError, ValueError):
        pass
    return EnvFacts(python=python, root=root, site_dirs=tuple(dirs), record=record)


def gpu_extension_problem(facts: EnvFacts, model_name: str, device: str) -> Optional[str]:
    """One line when a GPU run of GemNet-OC would meet torch-scatter/torch-sparse without CUDA kernels."""
    if "gemnet" not in model_name or facts.cuda_ext() is not False:
        return None
    where = f"the FairChem env at {facts.root}" if facts.root else facts.python
    return (f"backend_python: {where} has torch-scatter/torch-sparse without CUDA kernels, which GemNet-OC needs "
            f"for device={device}: rebuild it with {CUDA_FIX} (needs nvcc 12.x; a separate env) and keep "
            "MLIP_FAIRCHEM_CUDA_EXT=1 set wherever launch runs, or use device=cpu")
