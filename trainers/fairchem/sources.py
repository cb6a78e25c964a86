"""Where a FairChem run's model and config come from: ``model_in`` (a checkpoint, bare weights or a run dir),
``model.manifest`` / ``model.weights``, or the run's own checkpoints; and the config saved with that model.

One :class:`ModelSources` serves one task (or one preflight): every manifest and checkpoint config it reads,
and the weights' sha256 check, happen once however many steps ask for them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from launcher.core.errors import ConfigError
from launcher.core.layout import RunLayout
from launcher.core.schema import TRAINING_TASKS, RunSpec
from trainers.fairchem import checkpoints as ck

NATIVE = "fairchem"   # FairChem's own tree inside a run dir


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


def manifest_checkpoint(mpath: Path, m: Dict[str, Any]) -> Optional[Path]:
    """The FairChem checkpoint one of our manifests names beside its weights, when it exists."""
    fc = (m.get("fairchem") or {}).get("checkpoint")
    if fc:
        p = Path(fc) if os.path.isabs(fc) else mpath.parent / fc
        if p.is_file():
            return p
    return None


class ModelSources:
    """The model source and saved config of one spec, each file read once."""

    def __init__(self, spec: RunSpec, layout: RunLayout) -> None:
        self.spec, self.layout = spec, layout
        self._manifests: Dict[Path, Dict[str, Any]] = {}
        self._configs: Dict[Path, Optional[dict]] = {}
        self._sources: Dict[bool, Optional[str]] = {}

    # ------------------------------------------------------------------ files, read once
    def manifest(self, path: Path) -> Dict[str, Any]:
        from launcher.core.layout import read_manifest

        key = Path(path).resolve()
        if key not in self._manifests:
            self._manifests[key] = read_manifest(Path(path))
        return self._manifests[key]

    def checkpoint_config(self, path: Path) -> Optional[dict]:
        """The config a FairChem checkpoint carries (read without torch), or None."""
        from trainers.fairchem.checkpoints import read_checkpoint_config

        key = Path(path).resolve()
        if key not in self._configs:
            self._configs[key] = read_checkpoint_config(Path(path))
        return self._configs[key]

    # ------------------------------------------------------------------ the model
    def model_source(self, describe: bool = False) -> Optional[str]:
        """The FairChem checkpoint (or bare weights) that finetune/resume/evaluate/infer/export start from.
        ``describe``: for a dry run (no sha256 check; a placeholder where the run would find its checkpoint)."""
        if describe not in self._sources:
            self._sources[describe] = self._find_source(describe)
        return self._sources[describe]

    def _find_source(self, describe: bool) -> Optional[str]:
        spec, layout = self.spec, self.layout
        if spec.model_in:
            return _model_in(Path(spec.model_in))
        if spec.model.manifest:
            return self._manifest_source(Path(spec.model.manifest), describe)
        if spec.model.weights:
            return str(spec.model.weights)
        if spec.task in ("resume", "evaluate", "infer", "export"):
            native = layout.native(NATIVE)
            found = ck.newest(native) or (layout.checkpoint if layout.checkpoint.is_file() else None)
            if spec.task != "resume":
                found = (ck.newest(native, "best_checkpoint.pt") or found)
            if found:
                return str(found)
            if describe:
                return "<the run's newest checkpoint>"
            raise ConfigError(f"model_in: not set and {layout.root} holds no FairChem checkpoint to {spec.task}")
        return None

    def _manifest_source(self, mpath: Path, describe: bool) -> str:
        from launcher.core.layout import manifest_weights_path, verify_manifest_weights

        spec = self.spec
        m = self.manifest(mpath)
        if spec.model.weights:  # the user's weights override the manifest's (its config still applies)
            if not Path(spec.model.weights).is_file():
                raise ConfigError(f"model.weights: file not found: {spec.model.weights}")
            if not describe:  # checked when they are the very file the manifest names
                verify_manifest_weights(mpath, m, Path(spec.model.weights))
            return str(spec.model.weights)
        ours = manifest_checkpoint(mpath, m)
        if ours is not None:
            return str(ours)
        weights = manifest_weights_path(mpath, m)
        if not weights.is_file():
            raise ConfigError(f"model.manifest: {mpath} names weights {weights}, which do not exist "
                              "(set model.weights to their local copy)")
        if not describe:
            verify_manifest_weights(mpath, m, weights)
        return str(weights)

    # ------------------------------------------------------------------ the config
    def base_config(self, source: Optional[str]) -> Tuple[Any, str, List[str]]:
        """The config a run starts from: (``train.config_yml``'s path or a loaded config, the key it came from,
        notes).

        A model that was trained (fine-tune, resume, evaluate, infer) is always rebuilt with the model config
        it was trained with: that of its manifest, else the one its checkpoint carries. ``train.config_yml``,
        when given, supplies the rest (optimizer, losses, dataset settings); without it the whole config
        saved with the model is used.
        """
        from trainers.fairchem.config import load_config

        spec = self.spec
        saved_notes: List[str] = []
        saved, where, key = (None, None, None) if spec.task == "train" else self.saved_config(source, saved_notes)
        notes: List[str] = []
        if spec.train.config_yml:
            if saved is None or not isinstance(saved.get("model"), dict):
                return spec.train.config_yml, "train.config_yml", notes
            cfg = load_config(spec.train.config_yml)
            if cfg.get("model") != saved["model"]:
                notes.append(f"model: as trained, from {where} (train.config_yml's model section is not used)")
                cfg["model"] = saved["model"]
            return cfg, "train.config_yml", notes
        notes += saved_notes
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

    def saved_config(self, source: Optional[str], notes: Optional[List[str]] = None
                     ) -> Tuple[Optional[Dict[str, Any]], Optional[str], Optional[str]]:
        """(the runnable config saved with the model, where it was read, the run key naming it)."""
        from launcher.core.layout import manifest_form, manifest_weights_path
        from trainers.fairchem.saved import runnable_config

        spec = self.spec
        if spec.model.manifest and not spec.model_in:
            cfg = self.manifest_config(Path(spec.model.manifest), notes)
            if cfg is not None:
                return cfg, str(spec.model.manifest), "model.manifest"
        if not (source and Path(source).is_file()):
            return None, source, None
        key = "model_in" if spec.model_in else "model.weights"
        full = self.checkpoint_config(Path(source))
        if full:
            return runnable_config(full, notes), str(source), key
        beside = Path(source).parent / "manifest.json"
        if beside.is_file() and not spec.model.manifest:  # bare weights exported beside one of our manifests
            try:
                m = self.manifest(beside)
                if (manifest_form(m) == "mlip-launch"
                        and manifest_weights_path(beside, m).resolve() == Path(source).resolve()):
                    cfg = self.manifest_config(beside, notes)
                    if cfg is not None:
                        return cfg, str(beside), key
            except ConfigError:
                pass
        return None, str(source), None

    def manifest_config(self, mpath: Path, notes: Optional[List[str]]) -> Optional[Dict[str, Any]]:
        """The config a manifest carries: a v1 bundle's ``config``; ours: its FairChem checkpoint's (or the
        one recorded in the manifest) with the manifest's model section, or that model section alone."""
        from launcher.core.layout import manifest_form, manifest_model_config
        from trainers.fairchem.saved import model_section, runnable_config

        m = self.manifest(mpath)
        if manifest_form(m) == "v1":
            cfg = manifest_model_config(m)
            return runnable_config(cfg, notes) if cfg else None
        ours = manifest_checkpoint(mpath, m)
        full = self.checkpoint_config(ours) if ours is not None else None
        full = full or (m.get("fairchem") or {}).get("config")
        model = model_section({"model": m.get("model")}) if m.get("model") else None
        if full:
            cfg = runnable_config(full, notes)
            if model:
                cfg["model"] = model
            return cfg
        return {"model": model} if model else None


def _model_in(p: Path) -> str:
    """``model_in``: a file, or a run directory of ours (its FairChem checkpoint)."""
    if p.is_dir():
        theirs = RunLayout.of(p)
        for cand in (theirs.artifact(ck.NATIVE_CHECKPOINT), theirs.checkpoint):
            if cand.is_file():
                return str(cand)
        raise ConfigError(f"model_in: {p} holds no FairChem checkpoint (artifacts/fairchem_checkpoint.pt)")
    if not p.is_file():
        raise ConfigError(f"model_in: file not found: {p}")
    return str(p)
