"""Preflight of the FairChem backends: every problem of a spec, one line each naming the key, before anything runs.

The config, the model and the data are checked as far as can be without FairChem (no torch): the keys a
FairChem run cannot honour, the data it could not read or would read unsafely, a model of another backend,
the FairChem env itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from launcher.core.errors import ConfigError
from launcher.core.layout import RunLayout
from launcher.core.schema import TRAINING_TASKS, RunSpec
from trainers.fairchem.models import MODEL_NAMES
from trainers.fairchem.plan import use_cpu
from trainers.fairchem.sources import ModelSources


def problems(spec: RunSpec) -> List[str]:
    """Preflight: every run key honoured or refused (one line each), the config and its files, the env."""
    from trainers.fairchem.derive import refused_keys
    from trainers.fairchem.env import check_python

    found = _config_file_problems(spec)
    refused = (refused_keys(spec) + _unreadable_formats(spec) + _env_problems(spec) + _data_problems(spec)
               + _record_problems(spec))
    if not 0 <= spec.effective_seed < 2**32:  # FairChem seeds numpy's legacy generator with --seed
        key = "seed" if spec.train.seed is None else "train.seed"
        refused.append(f"{key}: backend={spec.backend} passes it to FairChem, which seeds numpy's legacy "
                       f"generator: must be in 0..2**32-1, got {spec.effective_seed}")
    sources = ModelSources(spec, RunLayout.of(spec.run_dir))
    wrong_model = _model_problems(spec, sources)
    if found or wrong_model:  # the config or the model is wrong: what follows would only repeat it
        return found + wrong_model + refused
    found += refused
    try:
        python = check_python(spec.backend_python, spec.backend_env)
    except ConfigError as e:
        found.append(str(e))
    else:
        found += _gpu_env_problems(spec, python)
    if spec.task == "export":
        return found
    return found + _run_config_problems(spec, sources, refused)


def _config_file_problems(spec: RunSpec) -> List[str]:
    t = spec.train
    found: List[str] = []
    if spec.task == "train" and not t.config_yml:
        found.append(f"train.config_yml: required for backend={spec.backend} task=train (a FairChem config)")
    if t.config_yml and not Path(t.config_yml).exists():
        found.append(f"train.config_yml: file not found: {t.config_yml}")
    elif t.config_yml and not Path(t.config_yml).is_file():
        found.append(f"train.config_yml: expected a file, got a directory: {t.config_yml}")
    return found


def _run_config_problems(spec: RunSpec, sources: ModelSources, refused: List[str]) -> List[str]:
    """The config the run would start from, with backend_args applied: its files, numbers, model name, and
    the refusals that depend on it (``refused``: those already listed)."""
    from launcher.core.numbers import nonfinite_number
    from trainers.fairchem.config import load_config, missing_files, set_dotted, split_backend_args
    from trainers.fairchem.derive import refused_keys

    try:
        base, origin, _notes = sources.base_config(sources.model_source(describe=True))
        cfg = load_config(base) if isinstance(base, str) else dict(base)
    except ConfigError as e:
        return [str(e)]
    overrides, _ = split_backend_args(spec.backend_args)
    for key, value in overrides:
        set_dotted(cfg, key, value)
    found = missing_files(cfg, origin)
    bad = nonfinite_number(cfg)
    if bad:  # a NaN cutoff stalls FairChem's graph building; a NaN elsewhere trains nothing
        found.append(f"{origin}: {bad[0]} is {bad[1]}; expected a finite number")
    name = (cfg.get("model") or {}).get("name") if isinstance(cfg.get("model"), dict) else None
    allowed = MODEL_NAMES.get(spec.backend, ())
    if name is None:
        found.append(f"{origin}: no model.name")
    elif allowed and name not in allowed:
        found.append(f"{origin}: model.name is '{name}', expected {' or '.join(allowed)} for backend={spec.backend}")
    return found + [p for p in refused_keys(spec, cfg) if p not in refused]


def _unreadable_formats(spec: RunSpec) -> List[str]:
    """data.* files FairChem v1's LMDB reader cannot open (ASE databases), one line each."""
    from data.datasets import detect_format

    problems = []
    for split in ("train", "val", "test"):
        path = getattr(spec.data, split)
        try:
            fmt = detect_format(path) if path else None
        except (ConfigError, OSError):
            continue  # reported by the generic data checks
        if fmt == "aselmdb":
            problems.append(f"data.{split}: {path} is an ASE database (.aselmdb); backend={spec.backend} reads "
                            "FairChem v1 LMDBs (PyG records): convert it with launch-data convert")
    return problems


def _env_problems(spec: RunSpec) -> List[str]:
    """``backend_env`` values become environment strings: a list or mapping there is a mistake, refused here
    (the Hydra door's schema refuses it; a plain run.yaml reaches the backend with it)."""
    return [f"backend_env.{k}: expected a string, number or boolean, got a {type(v).__name__} ({v!r})"
            for k, v in (spec.backend_env or {}).items() if not isinstance(v, (str, int, float, bool))]


def _data_problems(spec: RunSpec) -> List[str]:
    """FairChem picks its best checkpoint and early stop on data.val: the training data itself would make both
    meaningless."""
    t, v = spec.data.train, spec.data.val
    if spec.task in TRAINING_TASKS and t and v:
        try:
            same = Path(t).resolve() == Path(v).resolve() or Path(t).samefile(v)
        except OSError:
            same = False
        if same and _same_entries(spec):
            return [f"data.val: the same dataset as data.train ({t}); backend={spec.backend} selects its best "
                    "checkpoint on data.val: give a held-out split (launch-data convert can split one, or select "
                    "other entries with data.val_indices)"]
    return []


def _record_problems(spec: RunSpec) -> List[str]:
    """FairChem's reader unpickles every record it reads without an allow-list: a bounded sample of the records
    each split's selection reads (first, last, spread, seeded; the same on every run) is checked against it
    first, one line per split. ``data.trust_pickles`` skips this."""
    from data.datasets import detect_format
    from trainers.fairchem.subset import refused_record, split_selection

    if spec.data.trust_pickles or spec.task == "export":
        return []
    splits = {spec.eval.split: True} if spec.task in ("evaluate", "infer") else \
        {s: s == "train" for s in ("train", "val", "test")}
    problems = []
    for split, active in splits.items():
        path = getattr(spec.data, split)
        try:
            if not path or detect_format(path) != "lmdb":
                continue
            line = refused_record(path, split_selection(spec, split, active=active))
        except (ConfigError, OSError):
            continue  # unreadable data or a bad selection: the generic data checks report it
        if line:
            problems.append(f"data.{split}: {line}")
    return problems


def _same_entries(spec: RunSpec) -> bool:
    """Train and val of one file select the same entries (different samplings make two subsets)."""
    try:
        from data.datasets import count
        from data.indices import select_split_indices

        n = count(spec.data.train)
        a = select_split_indices(spec.data, "train", n, active=True)
        b = select_split_indices(spec.data, "val", n, active=False)
    except Exception:  # noqa: BLE001 - unreadable data or bad indices are reported by their own checks
        return False
    return set(a.tolist()) == set(b.tolist())


def _model_problems(spec: RunSpec, sources: ModelSources) -> List[str]:
    """A model of another backend (a MACE ``.model``, manifest or checkpoint) or of the other FairChem model,
    refused by name before FairChem starts on it."""
    from launcher.core.layout import manifest_model_config
    from trainers.fairchem.checkpoints import model_kind

    allowed = MODEL_NAMES.get(spec.backend, ())
    want = f"a FairChem {' or '.join(allowed) or spec.backend} checkpoint, or the manifest of such a run"

    def verdict(key: str, path: str, kind: Optional[str]) -> List[str]:
        if kind is None or kind in allowed:
            return []
        mace = kind.lower().startswith(("mace", "scaleshiftmace"))
        what = "a MACE model" if mace else f"a {kind} model"
        hint = " (use backend=mace for it)" if what == "a MACE model" else ""
        return [f"{key}: {path} is {what}; backend={spec.backend} needs {want}{hint}"]

    if spec.model_in and Path(spec.model_in).is_file():
        return verdict("model_in", spec.model_in, model_kind(Path(spec.model_in)))
    if spec.model.manifest and Path(spec.model.manifest).is_file():
        try:
            m = sources.manifest(Path(spec.model.manifest))
        except ConfigError:
            return []  # reported by the generic checks
        backend = str(m.get("backend") or "")
        if backend == "mace":
            return verdict("model.manifest", spec.model.manifest, "mace")
        cfg = manifest_model_config(m)  # ours: the model section; v1 bundles: a FairChem config or a MACE one
        name = cfg["model"].get("name") if isinstance(cfg.get("model"), dict) else cfg.get("name") or \
            cfg.get("model_type")
        if isinstance(name, str):
            return verdict("model.manifest", spec.model.manifest, name)
    if spec.model.weights and Path(spec.model.weights).is_file():
        return verdict("model.weights", spec.model.weights, model_kind(Path(spec.model.weights)))
    return []


def _gpu_env_problems(spec: RunSpec, python: str) -> List[str]:
    """A GPU run of GemNet-OC whose env has torch-scatter/torch-sparse without CUDA kernels (learned from the
    env's files), refused with the rebuild command; also where this machine has no GPU (a login node queueing
    a GPU job), beside the generic device line."""
    from trainers.fairchem.env import child_env
    from trainers.fairchem.provision import env_facts, gpu_extension_problem

    if spec.task == "export" or use_cpu(spec):
        return []
    facts = env_facts(python, child_env(spec.backend_env))
    line = gpu_extension_problem(facts, spec.backend, spec.device)
    return [line] if line else []
