"""EquiformerV2 / GemNet-OC: FairChem v1's native trainer as a subprocess in its own environment.

Inside ``run_dir`` FairChem's own tree lives under ``fairchem/`` (``configs/<ts>.yml`` derived
configs, ``checkpoints/<ts>/``, ``logs/``, ``results/<ts>/``); every invocation gets a fresh
timestamp id ``<ts>``, so a second run never silently "resumes" a finished one. After each run
the standard layout is filled: ``checkpoints/checkpoint.pt`` (newest full state),
``artifacts/best_model.pt`` (bare state dict) + ``fairchem_checkpoint.pt`` + ``manifest.json``,
``eval/`` for evaluate/infer, and FairChem's output in ``logs/fairchem-<ts>.log``.
"""
from __future__ import annotations

import json
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from launcher.core.atomic import atomic_write_text
from launcher.core.env import gpu_visible
from launcher.core.errors import ConfigError, FairchemError
from launcher.core.layout import RunLayout
from launcher.core.schema import TRAINING_TASKS, RunSpec
from trainers.api import JobContext, run_task
from trainers.fairchem import checkpoints as ck
from trainers.fairchem.checkpoint_io import CHECKPOINT_GLOBALS
from trainers.fairchem.models import MODEL_NAMES
from trainers.fairchem.process import format_command, run_process

CHILD = Path(__file__).resolve().with_name("child.py")
NATIVE = "fairchem"


# Known FairChem failures on our data -> what to do about them (appended to the error message).
HINTS = (
    ("different PBC configurations", "the data mixes periodic and slab (non-periodic z) cells; add backend_args "
                                     "--model.use_pbc_single=True"),
    ("qint", "GemNet-OC quadruplets need atoms tagged as in qint_tags; for bulk data add backend_args "
             "--model.qint_tags=[0,1,2]"),
    ("BalancedBatchSampler requires a dataset that has a metadata", "optim.load_balancing needs a metadata.npz "
     "(atom counts) beside the LMDB; add backend_args --optim.load_balancing_on_error=warn_and_no_balance"),
    ("train_on_oc20_total_energies", "format oc22_lmdb expects OC22 records (an 'oc22' field); for other LMDBs add "
                                     "backend_args --dataset.train.format=lmdb"),
)


def error_line(lines: Sequence[str]) -> str:
    """The line that says what went wrong: the last exception line of the output (``...Error: ...``; a rank's
    own, not torchrun's report that a rank failed), else the last ``error:`` line, else the last non-empty line."""
    import re

    rank = re.compile(r"^\[(?:rank|default)\d+\]:\s*")
    clean = [rank.sub("", ln.strip()) for ln in lines if ln.strip()]
    exc = re.compile(r"^(?:[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)|AssertionError)\b:?")
    for ln in reversed(clean):
        if exc.match(ln) and "ChildFailedError" not in ln:
            return ln
    for ln in reversed(clean):
        if ln.lower().startswith("error:"):
            return ln
    return clean[-1] if clean else ""


def hint_for(error: str) -> str:
    """The hint of :data:`HINTS` whose failure ``error`` (the error line, not the whole output) is."""
    for needle, hint in HINTS:
        if needle in error:
            return f" (hint: {hint})"
    return ""


def truncated_lmdbs(paths: Sequence[str]) -> List[str]:
    """The LMDB files among ``paths`` (files or folders of ``*.lmdb`` shards) shorter than their own page count
    says: reading one through its memory map ends in SIGBUS."""
    out: List[str] = []
    for path in paths:
        p = Path(path)
        files = sorted(p.glob("*.lmdb")) if p.is_dir() else [p]
        for f in files:
            try:
                import lmdb

                env = lmdb.open(str(f), subdir=False, readonly=True, lock=False, readahead=False, max_readers=1)
                try:
                    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
                finally:
                    env.close()
                if f.stat().st_size < need:
                    out.append(f"{f} ({f.stat().st_size} of {need} bytes)")
            except Exception:  # noqa: BLE001 - not an LMDB we can inspect: not the one to name
                continue
    return out


def _dataset_sources(config_text: str) -> List[str]:
    import yaml

    try:
        cfg = yaml.safe_load(config_text) or {}
    except yaml.YAMLError:
        return []
    ds = cfg.get("dataset") if isinstance(cfg.get("dataset"), dict) else {}
    return [str(v["src"]) for v in ds.values() if isinstance(v, dict) and isinstance(v.get("src"), str)]


def failure_message(plan: "Plan", res: Any) -> str:
    """One honest line for a FairChem process that failed: how it ended, the error line, a hint only where
    the error is one a hint explains, the log path."""
    import signal as _signal

    rc = res.returncode
    if rc < 0 and -rc == _signal.SIGBUS:
        cut = truncated_lmdbs(_dataset_sources(plan.config_text))
        why = (f"truncated LMDB: {', '.join(cut)}; convert or copy it again" if cut else
               "a memory-mapped file (an LMDB, a checkpoint) was cut short or changed while FairChem read it")
        return f"FairChem --mode {plan.mode} failed (killed by SIGBUS: {why}) [log: {plan.log_path}]"
    if rc < 0:
        return (f"FairChem --mode {plan.mode} failed ({res.describe_exit()}, sent by another process or the "
                f"system, e.g. the out-of-memory killer) [log: {plan.log_path}]")
    err = error_line(res.tail)
    return (f"FairChem --mode {plan.mode} failed ({res.describe_exit()}): {err[:300]}{hint_for(err)} "
            f"[log: {plan.log_path}]")


@dataclass
class Plan:
    """One FairChem invocation, fully decided before it runs (a dry run prints ``command``)."""

    mode: str
    timestamp_id: str
    native_dir: Path
    config_path: Path
    config_text: str
    command: List[str]
    env: Dict[str, str]
    log_path: Path
    notes: List[str] = field(default_factory=list)
    ranks: int = 1          # FairChem processes (torchrun ranks) this invocation runs
    steps_per_epoch: Optional[int] = None   # optimizer steps per epoch of a training (val records' step)
    title: str = ""         # of logs/curves.png

    @property
    def checkpoint_dir(self) -> Path:
        return self.native_dir / "checkpoints" / self.timestamp_id

    @property
    def results_dir(self) -> Path:
        return self.native_dir / "results" / self.timestamp_id


def _user_set(spec: RunSpec, key: str) -> bool:
    from trainers.fairchem.derive import user_set_keys

    return key in user_set_keys(spec)


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


def _model_problems(spec: RunSpec) -> List[str]:
    """A model of another backend (a MACE ``.model``, manifest or checkpoint) or of the other FairChem model,
    refused by name before FairChem starts on it."""
    from launcher.core.layout import manifest_model_config, read_manifest
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
            m = read_manifest(Path(spec.model.manifest))
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

    if spec.task == "export" or _use_cpu(spec):
        return []
    facts = env_facts(python, child_env(spec.backend_env))
    line = gpu_extension_problem(facts, spec.backend, spec.device)
    return [line] if line else []


def _use_cpu(spec: RunSpec) -> bool:
    return spec.device == "cpu" or (spec.device == "auto" and not gpu_visible())


def new_timestamp_id(task: str, native_dir: Path) -> str:
    """Unique per invocation (FairChem's own has ~2-minute resolution and reuses folders)."""
    base = f"{task}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    ts, n = base, 1
    while any((native_dir / sub / ts).exists() for sub in ("checkpoints", "results", "configs")):
        n += 1
        ts = f"{base}-{n}"
    return ts


class FairchemBackend:
    """The FairChem runner behind the common backend interface (``trainers.api.Backend``)."""

    name = "fairchem"
    model_globals = CHECKPOINT_GLOBALS   # what a checkpoint may name (preflight: launcher.model_files)

    def __init__(self, echo=None) -> None:
        self.echo = echo or (lambda line: print(line, flush=True))
        self.ranks = 1  # FairChem processes of a training: the job's tasks on this node (see ranks.py)

    @property
    def key_docs(self) -> Dict[str, str]:
        """How each run key reaches FairChem (docs/schema.md's backend table)."""
        from trainers.fairchem.derive import KEY_MAP, REFUSED

        return {**KEY_MAP, **{k: f"refused: {v}" for k, v in REFUSED.items()},
                "device": "cpu: --cpu; cuda / auto: FairChem's GPU; cuda:N: CUDA_VISIBLE_DEVICES=N for its process",
                "backend_python": "the interpreter FairChem runs in (default: the env scripts/setup-fairchem-env made)",
                "backend_env": "extra environment of FairChem's process",
                "backend_args": "FairChem config overrides (--a.b=value) and CLI flags, applied last"}

    # ------------------------------------------------------------------ start-up / checks / dry run
    def prestart(self, argv: Sequence[str], spec: Optional[RunSpec] = None):
        """The handle of FairChem's early interpreter, started by :meth:`run` so that its imports overlap the
        run's set-up (see prewarm)."""
        from trainers.fairchem import prewarm

        return prewarm.start_for_spec(spec) if spec is not None else prewarm.start(argv)

    def check(self, spec: RunSpec) -> List[str]:
        """Preflight: every run key honoured or refused (one line each), the config and its files, the env."""
        from trainers.fairchem.config import set_dotted, split_backend_args
        from trainers.fairchem.derive import missing_files, refused_keys
        from trainers.fairchem.env import check_python

        problems: List[str] = []
        t = spec.train
        if spec.task == "train" and not t.config_yml:
            problems.append(f"train.config_yml: required for backend={spec.backend} task=train (a FairChem config)")
        if t.config_yml and not Path(t.config_yml).exists():
            problems.append(f"train.config_yml: file not found: {t.config_yml}")
        elif t.config_yml and not Path(t.config_yml).is_file():
            problems.append(f"train.config_yml: expected a file, got a directory: {t.config_yml}")
        refused = (refused_keys(spec) + _unreadable_formats(spec) + _env_problems(spec) + _data_problems(spec)
                   + _record_problems(spec))
        if not 0 <= spec.effective_seed < 2**32:  # FairChem seeds numpy's legacy generator with --seed
            key = "seed" if spec.train.seed is None else "train.seed"
            refused.append(f"{key}: backend={spec.backend} passes it to FairChem, which seeds numpy's legacy "
                           f"generator: must be in 0..2**32-1, got {spec.effective_seed}")
        wrong_model = _model_problems(spec)
        if problems or wrong_model:  # the config or the model is wrong: what follows would only repeat it
            return problems + wrong_model + refused
        problems += refused
        try:
            python = check_python(spec.backend_python, spec.backend_env)
        except ConfigError as e:
            problems.append(str(e))
        else:
            problems += _gpu_env_problems(spec, python)
        if spec.task == "export":
            return problems
        try:
            source = self._model_source(spec, RunLayout.of(spec.run_dir), describe=True)
            base, origin, _notes = self._base_config(spec, source)
        except ConfigError as e:
            return problems + [str(e)]
        from trainers.fairchem.config import load_config

        try:
            cfg = load_config(base) if isinstance(base, str) else dict(base)
        except ConfigError as e:
            return problems + [str(e)]
        overrides, _ = split_backend_args(spec.backend_args)
        for key, value in overrides:
            set_dotted(cfg, key, value)
        problems += missing_files(cfg, origin)
        from launcher.core.numbers import nonfinite_number

        bad = nonfinite_number(cfg)
        if bad:  # a NaN cutoff stalls FairChem's graph building; a NaN elsewhere trains nothing
            problems.append(f"{origin}: {bad[0]} is {bad[1]}; expected a finite number")
        name = (cfg.get("model") or {}).get("name") if isinstance(cfg.get("model"), dict) else None
        allowed = MODEL_NAMES.get(spec.backend, ())
        if name is None:
            problems.append(f"{origin}: no model.name")
        elif allowed and name not in allowed:
            problems.append(f"{origin}: model.name is '{name}', expected {' or '.join(allowed)} "
                            f"for backend={spec.backend}")
        problems += [p for p in refused_keys(spec, cfg) if p not in refused]  # those that depend on the config
        return problems

    def describe(self, ctx: JobContext) -> str:
        """The FairChem command this spec runs, its derived config path and the launcher's adjustments."""
        from trainers.fairchem.subset import split_selection

        spec, layout = ctx.spec, ctx.layout
        try:
            if spec.task == "export":
                source = self._model_source(spec, layout, describe=True)
                return f"{CHILD} export {source} -> {layout.artifacts}"
            native = layout.native(NATIVE)
            ts = new_timestamp_id(spec.task, native)
            mode = "predict" if spec.task in ("evaluate", "infer") else "train"
            data = self._data_paths(spec, mode, layout, ts, materialize=False)
            source = None if spec.task == "train" else self._model_source(spec, layout, describe=True)
            checkpoint = source
            notes = []
            if spec.task == "finetune":
                notes.append(f"fine-tune start: weights-only copy of {checkpoint}")
                checkpoint = str(native / "init" / f"{ts}-weights.pt")

            def selection(split: str, active: bool) -> Any:
                try:
                    return split_selection(spec, split, active=active)
                except (ConfigError, OSError):  # unreadable data: preflight reports it under data.*
                    return None

            n_train = None
            if mode == "train" and data.get("train"):
                sel = selection("train", True)
                n_train = len(sel) if sel is not None else self._count(data.get("train"))
            if mode == "predict":
                samples = [(data["test"], selection(spec.eval.split, True))]
            else:
                samples = [(data[s], selection(s, s == "train")) for s in ("train", "val", "test") if data.get(s)]
            plan = self.plan(spec, layout, mode=mode, data=data, checkpoint=checkpoint, n_train=n_train,
                             timestamp_id=ts, source=source, samples=samples,
                             resume_target=spec.train.epochs if _user_set(spec, "train.epochs") else None)
        except ConfigError as e:
            return f"(not runnable: {e})"
        lines = [format_command(plan.command), f"# derived config: {plan.config_path}"]
        lines += [f"# {n}" for n in notes + plan.notes]
        return "\n".join(lines)

    # ------------------------------------------------------------------ planning
    def _base_config(self, spec: RunSpec, source: Optional[str]) -> Tuple[Any, str, List[str]]:
        """The config a run starts from: (``train.config_yml``'s path or a loaded config, the key it came from,
        notes).

        A model that was trained (fine-tune, resume, evaluate, infer) is always rebuilt with the model config
        it was trained with: that of its manifest, else the one its checkpoint carries. ``train.config_yml``,
        when given, supplies the rest (optimizer, losses, dataset settings); without it the whole config
        saved with the model is used.
        """
        from trainers.fairchem.config import load_config

        saved_notes: List[str] = []
        saved, where, key = (None, None, None) if spec.task == "train" else self._saved_config(spec, source,
                                                                                                 saved_notes)
        notes: List[str] = []
        if spec.train.config_yml is None:
            notes += saved_notes
        if spec.train.config_yml:
            if saved is None or not isinstance(saved.get("model"), dict):
                return spec.train.config_yml, "train.config_yml", notes
            cfg = load_config(spec.train.config_yml)
            if cfg.get("model") != saved["model"]:
                notes.append(f"model: as trained, from {where} (train.config_yml's model section is not used)")
                cfg["model"] = saved["model"]
            return cfg, "train.config_yml", notes
        if saved is None:
            what = f"{where} carries no FairChem config" if where else "no model source"
            raise ConfigError(f"train.config_yml: required for backend={spec.backend} task={spec.task} here ({what}); "
                              "name a FairChem config, or a model with one (model.manifest, or a FairChem checkpoint "
                              "as model_in)")
        if not isinstance(saved.get("optim"), dict) and spec.task in TRAINING_TASKS:
            raise ConfigError(f"train.config_yml: required for backend={spec.backend} task={spec.task}: {where} "
                              "carries the model but no training settings")
        notes.append(f"config: the one saved with the model, from {where}")
        return saved, key, notes

    def _saved_config(self, spec: RunSpec, source: Optional[str], notes: Optional[List[str]] = None
                      ) -> Tuple[Optional[Dict[str, Any]], Optional[str], Optional[str]]:
        """(the runnable config saved with the model, where it was read, the run key naming it)."""
        from launcher.core.layout import manifest_form, manifest_weights_path, read_manifest
        from trainers.fairchem.checkpoints import read_checkpoint_config
        from trainers.fairchem.derive import runnable_config

        if spec.model.manifest and not spec.model_in:
            cfg = self._manifest_config(Path(spec.model.manifest), notes)
            if cfg is not None:
                return cfg, str(spec.model.manifest), "model.manifest"
        if source and Path(source).is_file():
            key = "model_in" if spec.model_in else "model.weights"
            full = read_checkpoint_config(Path(source))
            if full:
                return runnable_config(full, notes), str(source), key
            beside = Path(source).parent / "manifest.json"
            if beside.is_file() and not spec.model.manifest:  # bare weights exported beside one of our manifests
                try:
                    m = read_manifest(beside)
                    if (manifest_form(m) == "mlip-launch"
                            and manifest_weights_path(beside, m).resolve() == Path(source).resolve()):
                        cfg = self._manifest_config(beside, notes)
                        if cfg is not None:
                            return cfg, str(beside), key
                except ConfigError:
                    pass
            return None, str(source), None
        return None, source, None

    def _manifest_config(self, mpath: Path, notes: Optional[List[str]]) -> Optional[Dict[str, Any]]:
        """The config a manifest carries: a v1 bundle's ``config``; ours: its FairChem checkpoint's (or the
        one recorded in the manifest) with the manifest's model section, or that model section alone."""
        from launcher.core.layout import manifest_form, manifest_model_config, read_manifest
        from trainers.fairchem.checkpoints import read_checkpoint_config
        from trainers.fairchem.derive import model_section, runnable_config

        m = read_manifest(mpath)
        if manifest_form(m) == "v1":
            cfg = manifest_model_config(m)
            return runnable_config(cfg, notes) if cfg else None
        ours = self._manifest_checkpoint(mpath, m)
        full = read_checkpoint_config(ours) if ours is not None else None
        full = full or (m.get("fairchem") or {}).get("config")
        model = model_section({"model": m.get("model")}) if m.get("model") else None
        if full:
            cfg = runnable_config(full, notes)
            if model:
                cfg["model"] = model
            return cfg
        return {"model": model} if model else None

    @staticmethod
    def _manifest_checkpoint(mpath: Path, m: Dict[str, Any]) -> Optional[Path]:
        fc = (m.get("fairchem") or {}).get("checkpoint")
        if fc:
            p = Path(fc) if os.path.isabs(fc) else mpath.parent / fc
            if p.is_file():
                return p
        return None

    def plan(
        self,
        spec: RunSpec,
        layout: RunLayout,
        *,
        mode: str,
        data: Dict[str, Optional[str]],
        checkpoint: Optional[str],
        n_train: Optional[int],
        epochs_done: Optional[int] = None,
        resume_target: Optional[int] = None,
        timestamp_id: Optional[str] = None,
        source: Optional[str] = None,
        samples: Optional[Sequence[Tuple[Optional[str], Any]]] = None,
        ranks: int = 1,
    ) -> Plan:
        """Derive the config and the command for one FairChem run (nothing is written).

        ``source`` is the model the run starts from as the user named it (its saved config rebuilds the
        model; default: ``checkpoint``); ``samples`` the (path, selection) the data sample is drawn from
        (default: every split of ``data`` in full). ``ranks > 1`` runs FairChem's distributed mode: that many
        processes started by torchrun in the FairChem env (see ranks.py).
        """
        from trainers.fairchem.config import dump_config
        from trainers.fairchem.derive import child_options, derive_config
        from trainers.fairchem.env import child_env, device_env, resolve_python
        from trainers.fairchem.subset import sample_data

        native = layout.native(NATIVE)
        ts = timestamp_id or new_timestamp_id(spec.task, native)
        user_env = {**os.environ, **{str(k): str(v) for k, v in spec.backend_env.items()}}
        base, origin, notes = self._base_config(spec, source if source is not None else checkpoint)
        if samples is None:
            samples = [(path, None) for path in data.values() if path]
        if n_train and ranks > 1:  # each rank trains its share: steps per epoch are counted on it
            n_train = -(-n_train // ranks)
        derived = derive_config(
            base, mode=mode, data=data, backend_args=list(spec.backend_args), env=user_env,
            n_train=n_train, epochs_done=epochs_done, resume_target=resume_target, spec=spec,
            sample=sample_data(samples), origin=origin,
        )
        notes = notes + derived.notes
        config_path = native / "configs" / f"{ts}.yml"
        python = resolve_python(spec.backend_python)
        from trainers.fairchem.ranks import torchrun_command

        cmd = [*(torchrun_command(python, ranks) if ranks > 1 else [python]), str(CHILD), "run"]
        if ranks > 1:
            notes.append(f"{ranks} FairChem ranks (torchrun, one DDP group; {'gloo' if _use_cpu(spec) else 'NCCL'}): "
                         f"the batch size is per rank, {ranks}x the structures per optimizer step")
        if mode == "train":
            cmd += ["--post", str(native / "checkpoints" / ts), "--mirror", str(layout.checkpoints)]
            opts, opt_notes = child_options(spec, derived.config, str(layout.train_log), n_train=n_train,
                                            logs_dir=str(layout.logs))
            cmd += opts
            notes += opt_notes
        cmd += ["--", "--mode", mode, "--config-yml", str(config_path), "--run-dir", str(native),
                "--timestamp-id", ts, "--seed", str(spec.effective_seed)]
        if spec.train.identifier:
            cmd += ["--identifier", spec.train.identifier]
        amp_key = "train.amp" if mode == "train" else "eval.amp"
        amp = spec.train.amp if mode == "train" else spec.eval.amp
        if _use_cpu(spec):
            cmd += ["--cpu"]
            if amp:
                notes.append(f"{amp_key}: autocast is CUDA-only; running on CPU without it")
        elif amp:
            cmd += ["--amp"]
        if checkpoint:
            cmd += ["--checkpoint", str(checkpoint)]
        if ranks > 1:
            cmd += ["--num-gpus", str(ranks)]   # FairChem's world size (ranks, CPU or GPU)
        cmd += derived.passthrough
        env = child_env(spec.backend_env)
        if mode == "train" and spec.train.logger == "wandb" and not user_env.get("WANDB_MODE"):
            env["WANDB_MODE"] = "offline"   # child_env disables wandb without an API key; train.logger asks for it
            notes.append("train.logger=wandb: WANDB_MODE=offline (set WANDB_MODE, e.g. in backend_env, to change it)")
        gpu = device_env(spec.device, spec.backend_env)
        if gpu:
            env.update(gpu)
            notes.append(f"device={spec.device}: CUDA_VISIBLE_DEVICES={gpu['CUDA_VISIBLE_DEVICES']} for FairChem")
        what = spec.train.config_yml if origin == "train.config_yml" else f"the config saved with the model ({origin})"
        header = [f"Derived by mlip-launch from {what} for task={spec.task} (FairChem --mode {mode}).", *notes]
        spe = None
        if mode == "train" and n_train:
            from trainers.fairchem.derive import steps_per_epoch

            batch = int((derived.config.get("optim") or {}).get("batch_size") or 1)
            spe = steps_per_epoch(n_train, batch, int(spec.train.accum_steps))
        return Plan(mode=mode, timestamp_id=ts, native_dir=native, config_path=config_path,
                    config_text=dump_config(derived.config, "\n".join(header)), command=cmd,
                    env=env, log_path=layout.native_log(NATIVE, ts), notes=notes, ranks=ranks,
                    steps_per_epoch=spe, title=f"{spec.run_name}: {spec.backend} {spec.task} (FairChem)")

    def _execute(self, plan: Plan, early: Optional[Any] = None) -> None:
        import shutil

        from launcher.core import preemption

        atomic_write_text(plan.config_path, plan.config_text)
        for note in plan.notes:
            self.echo(f"[fairchem] {note}")
        self.echo(f"[fairchem] {format_command(plan.command)}")
        from trainers.fairchem.logparse import ConsoleLines, MetricsTap

        training = plan.mode == "train"
        curves = self._curves(plan) if training else None
        tap = MetricsTap(plan.log_path.parent / "metrics.jsonl", plan.timestamp_id,
                         on_val=curves.request if curves is not None else None,
                         steps_per_epoch=plan.steps_per_epoch)
        console = ConsoleLines()   # warnings stay in the FairChem log; metrics with units

        def tee(line: str) -> None:
            shown = console(line)
            if shown is not None:
                self.echo(shown)
            tap(line)

        # FairChem's temp files (torch, torchrun's logs) go to a folder of this invocation, removed on every
        # exit path: a crash leaves nothing in /tmp
        tmp = plan.native_dir / "tmp" / plan.timestamp_id
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            res = run_process(plan.command, env={**plan.env, "TMPDIR": str(tmp)}, cwd=plan.native_dir,
                              log_path=plan.log_path, echo=tee, early=early,
                              forward_as=signal.SIGTERM if plan.ranks > 1 else None)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                tmp.parent.rmdir()
            except OSError:
                pass
            if curves is not None:   # the whole run so far, this invocation included, whatever ended it
                curves.close()
        if res.preempted:
            raise preemption.Preempted(f"FairChem stopped on a preemption signal ({res.describe_exit()})")
        if res.returncode != 0:
            raise FairchemError(failure_message(plan, res))

    # ------------------------------------------------------------------ helpers
    def _curves(self, plan: Plan) -> Any:
        """logs/curves.png re-drawn from logs/metrics.jsonl (every FairChem invocation of the run) at each
        validation, off the thread that reads FairChem's output. A drawing failure is one line; the training
        goes on."""
        from launcher.core.curves import BackgroundRedraw

        logs = plan.log_path.parent
        return BackgroundRedraw(logs / "metrics.jsonl", logs / "curves.png", title=plan.title,
                                on_fail=lambda failed: self.echo(f"[fairchem] logs/curves.png not updated ({failed})"))

    def _child(self, spec: RunSpec, *args: str) -> str:
        """Run a checkpoint helper of child.py in the FairChem env; its stdout. It dies with the launcher, and
        a stop signal meanwhile ends the run as preempted (it holds nothing worth waiting for)."""
        from launcher.core import preemption
        from trainers.fairchem.checkpoint_io import TRUST_ENV
        from trainers.fairchem.env import child_env, resolve_python
        from trainers.fairchem.process import ProbeFailed, run_probe

        python = resolve_python(spec.backend_python)
        try:
            env = {**child_env(spec.backend_env), **({TRUST_ENV: "1"} if spec.data.trust_pickles else {})}
            out = run_probe([python, str(CHILD), *args], env=env, timeout=None,
                            what=f"checkpoint helper '{args[0]}'")
        except ProbeFailed as e:
            raise FairchemError(str(e)) from None
        if preemption.preemption_requested():
            raise preemption.Preempted(f"stopped during checkpoint helper '{args[0]}'")
        if out.returncode != 0:
            msg = error_line((out.stderr + "\n" + out.stdout).splitlines()) or "?"
            raise FairchemError(f"checkpoint helper '{args[0]}' failed: {msg}")
        return out.stdout

    def _model_source(self, spec: RunSpec, layout: RunLayout, describe: bool = False) -> Optional[str]:
        """The FairChem checkpoint (or bare weights) that finetune/resume/evaluate/infer/export start from."""
        from launcher.core.layout import manifest_weights_path, read_manifest, verify_manifest_weights

        native = layout.native(NATIVE)
        if spec.model_in:
            p = Path(spec.model_in)
            if p.is_dir():  # a run directory of ours
                theirs = RunLayout.of(p)
                for cand in (theirs.native_checkpoint, theirs.checkpoint):
                    if cand.is_file():
                        return str(cand)
                raise ConfigError(f"model_in: {p} holds no FairChem checkpoint (artifacts/fairchem_checkpoint.pt)")
            if not p.is_file():
                raise ConfigError(f"model_in: file not found: {p}")
            return str(p)
        if spec.model.manifest:
            mpath = Path(spec.model.manifest)
            m = read_manifest(mpath)
            if spec.model.weights:  # the user's weights override the manifest's (its config still applies)
                if not Path(spec.model.weights).is_file():
                    raise ConfigError(f"model.weights: file not found: {spec.model.weights}")
                if not describe:  # checked when they are the very file the manifest names
                    verify_manifest_weights(mpath, m, Path(spec.model.weights))
                return str(spec.model.weights)
            ours = self._manifest_checkpoint(mpath, m)
            if ours is not None:
                return str(ours)
            weights = manifest_weights_path(mpath, m)
            if not weights.is_file():
                raise ConfigError(f"model.manifest: {mpath} names weights {weights}, which do not exist "
                                  "(set model.weights to their local copy)")
            if not describe:
                verify_manifest_weights(mpath, m, weights)
            return str(weights)
        if spec.model.weights:
            return str(spec.model.weights)
        if spec.task in ("resume", "evaluate", "infer", "export"):
            found = ck.newest(native) or (layout.checkpoint if layout.checkpoint.is_file() else None)
            if spec.task != "resume":
                found = (ck.newest(native, "best_checkpoint.pt") or found)
            if found:
                return str(found)
            if describe:
                return "<the run's newest checkpoint>"
            raise ConfigError(f"model_in: not set and {layout.root} holds no FairChem checkpoint to {spec.task}")
        return None

    def _data_paths(self, spec: RunSpec, mode: str, layout: RunLayout, ts: Optional[str], *,
                    materialize: bool) -> Dict[str, Optional[str]]:
        """Split -> LMDB path; selected subsets are copied into the run dir first."""
        from trainers.fairchem.subset import split_selection, write_subset

        if mode == "predict":
            split = spec.eval.split
            return {"test": getattr(spec.data, split)}
        out: Dict[str, Optional[str]] = {}
        for split in ("train", "val", "test"):
            path = getattr(spec.data, split)
            if path and materialize:
                idx = split_selection(spec, split, active=(split == "train"))
                if idx is not None:
                    target = layout.native(NATIVE) / "data" / f"{split}-{ts}.lmdb"
                    path = str(write_subset(path, idx, target))
                    self.echo(f"[fairchem] data.{split}: {len(idx)} selected records copied to {path}")
            out[split] = path
        return out

    def _count(self, path: Optional[str]) -> Optional[int]:
        from data.datasets import count

        if not path:
            return None
        try:
            return count(path)
        except (ConfigError, OSError):
            return None

    # ------------------------------------------------------------------ tasks
    def check_launch(self, spec: RunSpec, params: Any) -> List[str]:
        """Launcher settings (``hydra.launcher.*``) this backend cannot honour, one line each, before queueing."""
        from trainers.fairchem.ranks import launch_problems

        return launch_problems(spec.backend, params)

    def run(self, ctx: JobContext) -> Dict[str, Any]:
        from trainers.fairchem.ranks import job_tasks

        tasks = job_tasks()
        if tasks.nodes > 1:
            from trainers.fairchem.ranks import launch_problems

            raise ConfigError(launch_problems(ctx.spec.backend, tasks)[0])
        if ctx.extra.get("follower") or tasks.rank != 0:
            self.echo(f"[fairchem] task {tasks.rank} of {tasks.per_node}: FairChem's ranks run from task 0")
            return {"follower": True}
        self.ranks = tasks.per_node
        begin = getattr(ctx.prestarted, "begin", None)
        if begin is not None:   # accepted: the early interpreter imports while the run is prepared (prewarm.py)
            begin()
        return run_task(ctx, train=self._train_like, predict=self._predict, export=self._export)

    def _train_like(self, ctx: JobContext) -> Dict[str, Any]:
        spec, layout = ctx.spec, ctx.layout
        layout.create()
        native = layout.native(NATIVE)
        native.mkdir(parents=True, exist_ok=True)
        ts = new_timestamp_id(spec.task, native)
        ck.remove_stale_temps(native)
        own_last = ck.newest(native)

        checkpoint: Optional[str] = None
        source: Optional[str] = None
        continuing = False
        if spec.task == "resume":
            if spec.model_in or spec.model.manifest or spec.model.weights:
                checkpoint = self._model_source(spec, layout)
            elif own_last is not None:
                checkpoint = str(own_last)
            elif layout.checkpoint.is_file():
                checkpoint = str(layout.checkpoint)
            else:
                raise ConfigError(f"model_in: not set and {layout.root} holds no FairChem checkpoint to resume")
            continuing = True
        elif ctx.resume and own_last is not None:
            checkpoint, continuing = str(own_last), True          # an interrupted run of this spec
            self.echo(f"[fairchem] continuing the interrupted run from {own_last}")
        elif spec.task == "finetune":
            source = self._model_source(spec, layout)
            if not Path(source).is_file():
                raise ConfigError(f"model_in: file not found: {source}")
            init = native / "init" / f"{ts}-weights.pt"
            self._child(spec, "weights-only", str(source), str(init))
            self.echo(f"[fairchem] fine-tuning from {source} (weights only: fresh optimizer, epoch 0)")
            checkpoint = str(init)

        done: Optional[int] = None
        if continuing:
            # our child makes FairChem's checkpoint writes atomic, but a checkpoint from FairChem run directly
            # (or from an older runner) may be torn by a kill mid-write: then an older one is used
            candidates = [str(checkpoint)]
            if not (spec.model_in or spec.model.manifest or spec.model.weights):
                candidates += [str(p) for p in ck.newest_first(native) if str(p) != str(checkpoint)]
                if layout.checkpoint.is_file():
                    candidates.append(str(layout.checkpoint))
            info = None
            for cand in candidates:
                try:
                    info = json.loads(self._child(spec, "inspect", cand).strip().splitlines()[-1])
                except (FairchemError, ValueError, IndexError) as e:
                    self.echo(f"[fairchem] {cand} is not readable ({e}); trying an older checkpoint")
                    continue
                checkpoint = cand
                break
            if info is None:
                raise FairchemError(f"no readable checkpoint to continue from in {native / 'checkpoints'}")
            done = info.get("epochs_done") or 0
            if not info.get("has_optimizer"):
                self.echo(f"[fairchem] note: {checkpoint} holds no optimizer state; the optimizer starts fresh")

        data = self._data_paths(spec, "train", layout, ts, materialize=True)
        n_train = self._count(data["train"])
        if source is None and spec.task == "finetune" and continuing:
            source = self._model_source(spec, layout)
        plan = self.plan(spec, layout, mode="train", data=data, checkpoint=checkpoint, n_train=n_train,
                         epochs_done=done if spec.task == "resume" else None,
                         resume_target=spec.train.epochs if _user_set(spec, "train.epochs") else None,
                         timestamp_id=ts, source=source, ranks=self.ranks)
        max_epochs = _max_epochs(plan.config_text)
        if continuing and spec.task != "resume" and done is not None and max_epochs is not None and done >= max_epochs:
            self.echo(f"[fairchem] {checkpoint} already trained {done}/{max_epochs} epochs: nothing left to train")
        else:
            from launcher.core import preemption

            try:
                self._execute(plan, early=ctx.prestarted)
            except preemption.Preempted as e:
                last = ck.newest(native)
                if last is not None:  # normally mirrored by the child already; a no-op then
                    ck.atomic_copy(last, layout.checkpoint)
                    raise preemption.Preempted(f"{e}; checkpoint {layout.checkpoint}") from None
                if not continuing:
                    self.echo("[fairchem] stopped before FairChem wrote its first checkpoint: nothing was saved, "
                              "the run starts from the beginning when launched again")
                    raise preemption.Preempted(f"{e}; no checkpoint written yet") from None
                raise
            if not (plan.checkpoint_dir / "checkpoint.pt").is_file() and not (plan.checkpoint_dir / "best_checkpoint.pt").is_file():
                # child.py saves the final state of every training of FairChem's loop that took a step
                done_note = f", {done} epochs already done" if done else ""
                raise FairchemError(f"FairChem exited 0 but wrote no checkpoint in {plan.checkpoint_dir}: it trained "
                                    f"no step (optim.max_epochs {max_epochs}{done_note}), or its trainer's own loop "
                                    f"saved none [log: {plan.log_path}]")
        return self._finalize(spec, layout)

    def _finalize(self, spec: RunSpec, layout: RunLayout) -> Dict[str, Any]:
        """Mirror the newest checkpoints into the standard layout and export the best weights."""
        native = layout.native(NATIVE)
        last = ck.newest(native)
        if last is not None:
            ck.atomic_copy(last, layout.checkpoint)
        best = ck.newest(native, "best_checkpoint.pt")
        if best is not None:
            ck.atomic_copy(best, layout.best_checkpoint)
        source = best or last
        if source is None:
            raise FairchemError(f"no FairChem checkpoint in {native}/checkpoints to export")
        summary = self._summary_for(spec, source)
        if best is None:   # no validation within the run: the final weights, and no best metric to claim
            summary = {**summary, "best": None, "best_val_metric": None, "val_metrics": {}}
            self.echo("[fairchem] no validation ran (no data.val, or optim.eval_every beyond the run's steps): "
                      "artifacts/best_model.pt holds the final weights (manifest: fairchem.weights = final)")
        manifest = self._write_artifacts(spec, layout, source, source.parent / "weights.pt", summary,
                                         weights_kind="best" if best is not None else "final")
        last_info = summary.get("last") if source == best and summary.get("last") else summary
        epochs = (last_info or {}).get("epochs_done")
        if last is not None and last.parent != source.parent:
            epochs = json.loads(self._child(spec, "inspect", str(last)).strip().splitlines()[-1]).get("epochs_done")
        return {
            "epochs_done": epochs,
            "best_val_metric": summary.get("best_val_metric"),
            "primary_metric": summary.get("primary_metric"),
            "val_metrics": summary.get("val_metrics", {}),
            "best_model": str(layout.best_model),
            "checkpoint": str(layout.checkpoint) if last is not None else None,
            "weights_sha256": manifest["weights"]["sha256"],
        }

    def _summary_for(self, spec: RunSpec, source: Path) -> Dict[str, Any]:
        """summary.json + weights.pt of ``source``: written by the training child, else made now."""
        folder = source.parent
        summary_path, weights = folder / "summary.json", folder / "weights.pt"
        if summary_path.is_file() and weights.is_file() and weights.stat().st_mtime_ns >= source.stat().st_mtime_ns:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
            if Path(summary.get("source", "")) == source:
                return summary
        out = folder / f"export-{uuid.uuid4().hex[:6]}"
        self._child(spec, "export", str(source), str(out))
        (out / "weights.pt").replace(weights)
        (out / "summary.json").replace(summary_path)
        out.rmdir()
        return json.loads(summary_path.read_text(encoding="utf-8"))

    def _write_artifacts(self, spec: RunSpec, layout: RunLayout, source: Path, weights: Path,
                         summary: Dict[str, Any], config: Optional[Dict[str, Any]] = None,
                         weights_kind: Optional[str] = None) -> Dict[str, Any]:
        """artifacts/best_model.pt (bare state dict), fairchem_checkpoint.pt (untouched), manifest.json.

        The manifest's ``fairchem.weights`` says which weights these are: ``best`` (the best validation's),
        ``final`` (a training in which no validation ran: its last state; ``fairchem.best`` is then null) or
        ``checkpoint`` (an exported file that is not a best checkpoint)."""
        from launcher.core.layout import package_versions, write_manifest

        best = summary.get("best", source.name == "best_checkpoint.pt")
        kind = weights_kind or ("best" if best else "checkpoint")
        ck.atomic_copy(weights, layout.best_model)
        ck.atomic_copy(source, layout.native_checkpoint)
        versions = {**package_versions(["mlip-launch"]), **(summary.get("versions") or {})}
        model = dict(summary.get("model") or {})
        return write_manifest(
            layout, backend=spec.backend, weights=layout.best_model, model_config=model, heads=[],
            data={s: getattr(spec.data, s) for s in ("train", "val", "test") if getattr(spec.data, s)},
            metrics=summary.get("val_metrics") or {}, versions=versions,
            extra={"fairchem": {
                "checkpoint": layout.native_checkpoint.name,
                "source": str(source),
                "best": None if best is None else bool(best),
                "weights": kind,
                "trainer": summary.get("trainer"),
                "model_name": model.get("name"),
                "epoch": summary.get("epoch"),
                "step": summary.get("step"),
                "primary_metric": summary.get("primary_metric"),
                "best_val_metric": summary.get("best_val_metric"),
                "n_parameters": summary.get("n_parameters"),
                "config_yml": spec.train.config_yml,
                **({"config": config} if config else {}),   # when the checkpoint carries none (bare weights)
                "load": "state dict without the 'module.' prefix; build the model from 'model' with "
                        "fairchem.core.common.registry and load_state_dict(strict=True)",
            }},
        )

    # ------------------------------------------------------------------ evaluate / infer / export
    def _predict(self, ctx: JobContext, *, with_metrics: bool) -> Dict[str, Any]:
        import numpy as np

        from trainers.fairchem.predictions import duplicate_ids, evaluate_predictions, find_predictions, read_labels
        from trainers.fairchem.subset import split_selection, write_subset

        spec, layout = ctx.spec, ctx.layout
        layout.create()
        native = layout.native(NATIVE)
        native.mkdir(parents=True, exist_ok=True)
        ts = new_timestamp_id(spec.task, native)
        split = spec.eval.split
        src = getattr(spec.data, split)
        if not src:
            raise ConfigError(f"data.{split}: required for task={spec.task} with eval.split={split}")
        model = source = self._model_source(spec, layout)
        if not is_training_checkpoint(source):
            wrapped = native / "init" / f"{ts}-weights.pt"
            self._child(spec, "weights-only", str(source), str(wrapped))
            source = str(wrapped)

        selection = split_selection(spec, split, active=True)
        tp = bool(spec.data.trust_pickles)
        gb = spec.eval.group_by if with_metrics else None
        labels = (read_labels(src, with_forces=not spec.eval.energy_only, trust_pickles=tp, group_by=gb)
                  if selection is None else None)
        index = np.arange(len(labels.ids)) if labels is not None else selection
        path = src
        if labels is None or duplicate_ids(labels.ids):
            index = selection if selection is not None else np.arange(len(labels.ids))
            path = str(write_subset(src, index, native / "data" / f"{split}-{ts}.lmdb", rekey=True, trust_pickles=tp))
            labels = read_labels(path, with_forces=not spec.eval.energy_only, trust_pickles=tp, group_by=gb)
            self.echo(f"[fairchem] data.{split}: {len(index)} records copied to {path} (unique ids for predictions)")

        plan = self.plan(spec, layout, mode="predict", data={"test": path}, checkpoint=source, n_train=None,
                         timestamp_id=ts, source=model)
        self._execute(plan, early=ctx.prestarted)
        npz = find_predictions(plan.results_dir)
        metrics = evaluate_predictions(npz, labels, index, layout.eval_dir, with_metrics=with_metrics,
                                       energy_only=spec.eval.energy_only, group_by=gb,
                                       note=lambda line: self.echo(f"[fairchem] {line}"))
        if with_metrics:
            from launcher.core.metrics import metrics_line

            self.echo(f"[fairchem] {spec.task} data.{split}: {metrics_line(metrics)}")
        return {"metrics": metrics, "eval_dir": str(layout.eval_dir), "predictions": str(npz), "model": str(source)}

    def _export(self, ctx: JobContext) -> Dict[str, Any]:
        spec, layout = ctx.spec, ctx.layout
        layout.create()
        source = Path(self._model_source(spec, layout) or "")
        native = layout.native(NATIVE)
        out = native / "export" / new_timestamp_id("export", native)
        self._child(spec, "export", str(source), str(out))
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        summary["best"] = source.name == "best_checkpoint.pt"
        config = None
        if not summary.get("model"):  # bare weights: the model config comes from the manifest they came with
            saved, _where, _key = self._saved_config(spec, str(source))
            if saved and isinstance(saved.get("model"), dict):
                summary["model"] = saved["model"]
                config = saved
        manifest = self._write_artifacts(spec, layout, source, out / "weights.pt", summary, config=config)
        return {"best_model": str(layout.best_model), "weights_sha256": manifest["weights"]["sha256"],
                "epochs_done": summary.get("epochs_done")}


def is_training_checkpoint(path: str | Path) -> bool:
    """True for a FairChem checkpoint, False for a bare state dict (which FairChem cannot load).

    Decided without torch: a zip-format torch file's ``data.pkl`` names its top-level keys.
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if pkl is None:
                return True
            head = zf.read(pkl)
    except zipfile.BadZipFile:
        return True  # legacy (non-zip) torch file: let FairChem decide
    return b"state_dict" in head and b"normalizers" in head


def _max_epochs(config_text: str) -> Optional[int]:
    import yaml

    cfg = yaml.safe_load(config_text) or {}
    value = (cfg.get("optim") or {}).get("max_epochs")
    return int(value) if isinstance(value, (int, float)) else None
