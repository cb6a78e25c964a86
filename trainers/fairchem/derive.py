"""The FairChem config a run actually uses: the user's config, flattened, with our data and policies.

Everything the launcher changes is recorded in ``notes`` (written as the derived file's header
and logged), so the file in the run directory explains itself:

- ``dataset.{train,val,test}.src`` come from ``data.*`` (splits we do not have are dropped);
- the logger is ``train.logger`` (tensorboard by default; child.py puts its files under the run's ``logs/``;
  ``none`` runs without one); predictions run without a logger. Without a spec (FairChem's config alone): the
  logger becomes tensorboard unless the config asks for another logger that can work (wandb without
  ``WANDB_API_KEY`` fails at start-up);
- predictions are written in float32 (FairChem's default is float16);
- the run keys the user set (``train.*``, ``eval.*``, ``data.batch_size`` with a value other than the
  schema default) override the matching FairChem settings (:data:`KEY_MAP`); keys left at their
  defaults leave FairChem's tuned config as it is;
- ``backend_args`` of the form ``--a.b=value`` are applied after all of the above;
- then what the data needs, decided from a bounded sample of the selected records: per-structure
  graphs (``model.use_pbc_single``) when periodic and non-periodic cells are mixed, and GemNet-OC's
  ``qint_tags`` widened when some structures have no atom with a quadruplet tag;
- then, only where the run would otherwise leave nothing behind: validation/checkpointing at least
  once per epoch (FairChem saves ``checkpoint.pt`` only every ``eval_every`` steps, which a short run
  may never reach), and on resume ``optim.max_epochs`` raised above the epochs already done.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from launcher.core.errors import ConfigError
from launcher.core.schema import PLATEAU_PATIENCE_DEFAULT
from launcher.core.schema import early_stop_evals as schema_early_stop_evals
from trainers.fairchem.config import load_config, set_dotted, split_backend_args
from trainers.fairchem.data_needs import DataSample, apply_data_needs
from trainers.fairchem.replay_keys import REPLAY_KEY_DOCS, replay_problems

SPLITS = ("train", "val", "test")


@dataclass
class Derived:
    config: Dict[str, Any]
    passthrough: List[str] = field(default_factory=list)   # backend_args that are FairChem CLI flags
    notes: List[str] = field(default_factory=list)
    overridden: List[str] = field(default_factory=list)   # dotted keys set by backend_args


def _datasets(config: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """FairChem accepts ``dataset`` as {train,val,test}, as one train mapping, or as a list."""
    ds = config.get("dataset")
    if ds is None:
        return {}
    if isinstance(ds, list):
        return {split: dict(d or {}) for split, d in zip(SPLITS, ds)}
    if isinstance(ds, dict):
        if any(k in ds for k in (*SPLITS, "relax")):
            return {k: dict(v or {}) for k, v in ds.items()}
        return {"train": dict(ds)}
    raise ConfigError(f"train.config_yml: 'dataset' must be a mapping or a list, got {type(ds).__name__}")


def wandb_configured(env: Dict[str, str]) -> bool:
    return bool(env.get("WANDB_API_KEY")) or env.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun")


def logger_config(current: Any, name: str, project: Optional[str]) -> Dict[str, Any]:
    """FairChem's ``logger`` for ``train.logger`` = ``name``: tensorboard, none (child.py runs without a logger), or
    wandb keeping the config's own wandb settings (entity, group ...), the project ``train.wandb_project`` when
    set, else the config's, else mlip-launch."""
    if name != "wandb":
        return {"name": name}
    own = dict(current) if isinstance(current, dict) and current.get("name") == "wandb" else {}
    own.update({"name": "wandb", "project": project or own.get("project") or "mlip-launch"})
    return own


def steps_per_epoch(n_train: int, batch_size: int, accum_steps: int = 1) -> int:
    """FairChem steps (optimizer updates) per epoch of its single-process sampler (no drop_last): one per
    batch, or per ``accum_steps`` batches with child.py's --accum-steps (the last group of an epoch steps too)."""
    batches = max(1, math.ceil(n_train / max(1, batch_size)))
    return max(1, math.ceil(batches / max(1, accum_steps)))


def derive_config(
    config_yml: Union[str, os.PathLike, Dict[str, Any]],
    *,
    mode: str,
    data: Dict[str, Optional[str]],
    backend_args: List[str],
    env: Dict[str, str],
    n_train: Optional[int] = None,
    epochs_done: Optional[int] = None,
    resume_target: Optional[int] = None,
    spec: Any = None,
    sample: Optional[DataSample] = None,
    origin: str = "train.config_yml",
) -> Derived:
    """Build the config for ``mode`` (``train`` or ``predict``).

    ``config_yml`` is a FairChem config file, or an already loaded config (from a manifest or a
    checkpoint; ``origin`` names the key it came from). ``data`` maps split -> LMDB path (for predict,
    only ``test`` is read). ``n_train`` lets the per-epoch checkpoint policy work;
    ``epochs_done``/``resume_target`` drive the resume rule. ``spec`` (a RunSpec) brings the run keys
    the user set (:func:`apply_run_keys`); ``sample`` what the data needs (:func:`apply_data_needs`).
    """
    if mode not in ("train", "predict"):
        raise ValueError(f"mode must be train or predict, got {mode!r}")
    if isinstance(config_yml, dict):
        config, where = copy.deepcopy(config_yml), origin
    else:
        config, where = load_config(config_yml), f"{origin}: {config_yml}"
    notes: List[str] = []
    if "model" not in config or not isinstance(config["model"], dict) or "name" not in config["model"]:
        raise ConfigError(f"{where}: no 'model' section with a 'name'")
    if not isinstance(config.get("optim"), dict):
        config["optim"] = {}
    if mode == "train":
        _train_datasets(config, data, notes)
    else:
        _predict_datasets(config, data, notes)
    _logger(config, mode, spec, env, notes)
    set_by_keys = apply_run_keys(config, spec, mode=mode, n_train=n_train, notes=notes) if spec is not None else {}
    overridden, passthrough = _apply_backend_args(config, backend_args, set_by_keys, notes)
    if spec is not None and mode == "train":
        apply_patience(config, spec, overridden, notes)
    if sample is not None:
        notes += apply_data_needs(config, sample, overridden)
    if mode == "train":   # then what keeps a training from leaving nothing behind
        notes += _within_epoch(config, spec, n_train, set(overridden) | set(set_by_keys))
        notes += _save_every(config, spec, n_train, overridden)
        notes += _resume_epochs(config, epochs_done, resume_target)
        if n_train is not None:
            optim = config["optim"]
            notes += _unreached_validation(optim, steps_per_epoch(n_train, int(optim.get("batch_size", 1)),
                                                                  _accum(spec)), epochs_done or 0)
    return Derived(config=config, passthrough=passthrough, notes=notes, overridden=overridden)


def _train_datasets(config: Dict[str, Any], data: Dict[str, Optional[str]], notes: List[str]) -> None:
    """``dataset.{train,val,test}.src`` from ``data.*`` (keeping each split's other settings); splits without
    data dropped; one LMDB file per split."""
    datasets = _datasets(config)
    wanted = {s: data.get(s) for s in SPLITS}
    seen: Dict[str, str] = {}
    for split in SPLITS:
        path = wanted[split]
        if path and os.path.realpath(path) in seen:
            other = seen[os.path.realpath(path)]
            if split == "test":
                notes.append(f"dataset.test dropped: data.test is the same file as data.{other} "
                             "(one process cannot open an LMDB twice)")
                wanted[split] = None
                continue
            raise ConfigError(f"data.{split}: same file as data.{other} ({path}); FairChem opens each "
                              "LMDB once per process, so the splits must be different files")
        if path:
            seen[os.path.realpath(path)] = split
    new: Dict[str, Dict[str, Any]] = {}
    for split in SPLITS:
        if wanted[split]:
            entry = dict(datasets.get(split, {}))
            entry["src"] = str(wanted[split])
            new[split] = entry
        elif split in datasets:
            notes.append(f"dataset.{split} dropped (data.{split} not set)")
    for extra in datasets:
        if extra not in SPLITS:
            new[extra] = datasets[extra]
    if not new.get("train"):
        raise ConfigError("data.train: required for FairChem training")
    config["dataset"] = new


def _predict_datasets(config: Dict[str, Any], data: Dict[str, Optional[str]], notes: List[str]) -> None:
    """The one dataset predictions read (``dataset.test``; the train split's settings kept, its data not), and
    predictions in float32."""
    datasets = _datasets(config)
    test = data.get("test")
    if not test:
        raise ConfigError("data.test: no dataset to predict on")
    train_only_settings = {k: v for k, v in datasets.get("train", {}).items() if k != "src"}
    entry = dict(datasets.get("test", {}))
    entry["src"] = str(test)
    config["dataset"] = {"train": train_only_settings, "test": entry}
    if not train_only_settings:
        config["dataset"].pop("train")
    task = config.setdefault("task", {})
    if not isinstance(task, dict):
        raise ConfigError("train.config_yml: 'task' must be a mapping")
    if task.get("prediction_dtype") is None:
        task["prediction_dtype"] = "float32"
        notes.append("task.prediction_dtype: float32 (FairChem's default float16 loses energy precision)")


def _logger(config: Dict[str, Any], mode: str, spec: Any, env: Dict[str, str], notes: List[str]) -> None:
    """``train.logger`` (predictions run without one); without a spec, tensorboard where wandb cannot work."""
    logger = config.get("logger", "wandb")
    logger_name = logger if isinstance(logger, str) else (logger or {}).get("name")
    if spec is not None:
        config["logger"] = logger_config(logger, spec.train.logger if mode == "train" else "none",
                                         spec.train.wandb_project)
        if mode == "train" and logger_name != spec.train.logger:
            notes.append(f"logger: {spec.train.logger} (train.logger; the config asked for "
                         f"{logger_name or 'the default wandb'})")
    elif logger_name in (None, "wandb") and not wandb_configured(env):
        config["logger"] = {"name": "tensorboard"}
        notes.append(f"logger: tensorboard (config asked for {logger_name or 'the default wandb'}; "
                     "no WANDB_API_KEY/WANDB_MODE set)")


def _apply_backend_args(config: Dict[str, Any], backend_args: List[str], set_by_keys: Dict[str, str],
                        notes: List[str]) -> Tuple[List[str], List[str]]:
    """``backend_args`` have the last word on the config: (dotted keys they set, FairChem CLI flags)."""
    overrides, passthrough = split_backend_args(backend_args)
    for key, value in overrides:
        set_dotted(config, key, value)
    overridden = [k for k, _ in overrides]
    if overrides:
        notes.append("backend_args applied: " + " ".join(f"--{k}={v!r}" for k, v in overrides))
    for key in overridden:
        for dotted, run_key in set_by_keys.items():
            if dotted == key or dotted.startswith(key + ".") or key.startswith(dotted + "."):
                notes.append(f"backend_args --{key} replaces what {run_key} set")
    return overridden, passthrough


def _accum(spec: Any) -> int:
    return int(spec.train.accum_steps) if spec is not None else 1


def _within_epoch(config: Dict[str, Any], spec: Any, n_train: Optional[int], fixed: set) -> List[str]:
    """Validation/checkpoints at least once per epoch (FairChem saves ``checkpoint.pt`` only every ``eval_every``
    steps, which a short run may never reach); ``fixed``: the dotted keys the user set."""
    optim, notes = config["optim"], []
    if n_train is None:
        return notes
    spe = steps_per_epoch(n_train, int(optim.get("batch_size", 1)), _accum(spec))
    for key in ("eval_every", "checkpoint_every"):
        value = optim.get(key)
        if f"optim.{key}" in fixed or value is None or value == -1:
            continue   # unset: FairChem's default, every len(train_loader) steps, i.e. once per epoch
        if isinstance(value, (int, float)) and value > spe:
            optim[key] = spe
            notes.append(f"optim.{key}: {value} -> {spe} (one epoch is {spe} steps; otherwise no "
                         "validation/checkpoint would happen within an epoch)")
    return notes


def _save_every(config: Dict[str, Any], spec: Any, n_train: Optional[int], overridden: List[str]) -> List[str]:
    """``train.save_every`` epochs as FairChem's ``optim.checkpoint_every`` steps (unless backend_args set it)."""
    if spec is None or "train.save_every" not in user_set_keys(spec):
        return []
    every = int(spec.train.save_every)
    if n_train is None:
        raise ConfigError("train.save_every: the number of training structures is not known, so epochs cannot "
                          "be turned into FairChem's optim.checkpoint_every steps")
    if "optim.checkpoint_every" in overridden:
        return []
    optim = config["optim"]
    spe = steps_per_epoch(n_train, int(optim.get("batch_size", 1)), _accum(spec))
    old = optim.get("checkpoint_every", "unset")
    optim["checkpoint_every"] = every * spe
    return [f"optim.checkpoint_every: {old} -> {every * spe} (train.save_every={every} epochs of {spe} steps)"]


def _resume_epochs(config: Dict[str, Any], epochs_done: Optional[int], resume_target: Optional[int]) -> List[str]:
    """On resume, ``optim.max_epochs`` raised above the epochs already done (to ``resume_target`` when the user
    asked for more, else by the config's own count)."""
    optim = config["optim"]
    if epochs_done is None:
        return []
    max_epochs = int(optim.get("max_epochs", 1))
    if epochs_done < max_epochs:
        return []
    target = resume_target if resume_target is not None and resume_target > epochs_done else epochs_done + max_epochs
    optim["max_epochs"] = target
    return [f"optim.max_epochs: {max_epochs} -> {target} ({epochs_done} epochs already done)"]


def _unreached_validation(optim: Dict[str, Any], spe: int, epochs_done: int) -> List[str]:
    """A note when ``optim.eval_every`` (as the user left it) falls beyond the steps this run trains: no
    validation, so the final training state becomes the run's model."""
    every, max_epochs = optim.get("eval_every"), optim.get("max_epochs", 1)
    if not isinstance(every, (int, float)) or every <= 0 or not isinstance(max_epochs, (int, float)):
        return []
    first, last = epochs_done * spe, int(max_epochs) * spe
    if last > first and (last // int(every)) * int(every) <= first:
        return [f"optim.eval_every: {every} steps, and this run trains steps {first + 1}-{last}: no validation will "
                "run; the final weights become the run's model (manifest: fairchem.weights = final)"]
    return []


# ---------------------------------------------------------------------------------------------
# The run keys (train.*, eval.*, data.batch_size) -> FairChem
# ---------------------------------------------------------------------------------------------

#: What each run key becomes in a FairChem run (the derived config, the FairChem CLI or child.py's
#: options). Only keys the user set (a value other than the schema default) take effect.
KEY_MAP: Dict[str, str] = {
    **REPLAY_KEY_DOCS,
    "train.epochs": "optim.max_epochs",
    "train.batch_size": "optim.batch_size",
    "data.batch_size": "optim.eval_batch_size",
    "train.lr": "optim.lr_initial",
    "train.optimizer": "optim.optimizer (adam -> Adam, adamw -> AdamW, sgd -> SGD; optimizer_params the new "
                       "optimizer does not take are dropped)",
    "train.weight_decay": "optim.optimizer_params.weight_decay (and optim.weight_decay where the config has it, "
                          "which FairChem reads first)",
    "train.energy_weight": "the energy loss coefficient: loss_functions[energy].coefficient, or "
                           "optim.energy_coefficient in a legacy config",
    "train.force_weight": "the forces loss coefficient: loss_functions[forces].coefficient, or "
                          "optim.force_coefficient in a legacy config",
    "train.max_grad_norm": "optim.clip_grad_norm (null: removed, no clipping)",
    "train.num_workers": "optim.num_workers",
    "train.ema_decay": "optim.ema_decay",
    "train.save_every": "optim.checkpoint_every = save_every x steps per epoch",
    "train.patience": "optim.patience when optim.scheduler is ReduceLROnPlateau (refused otherwise)",
    "train.progress_bar": "false: hide_eval_progressbar: true (FairChem's validation/prediction bars)",
    "train.amp": "--amp (CUDA only: on CPU a note and no effect)",
    "eval.amp": "--amp in predict mode (CUDA only: on CPU a note and no effect)",
    "train.seed": "--seed (always passed: train.seed, else seed)",
    "train.identifier": "--identifier",
    "train.accum_steps": "child.py --accum-steps N",
    "train.freeze": "head_only: child.py --freeze head_only",
    "train.early_stop_factor": "child.py --early-stop N, N = ceil(factor x patience); patience = train.patience, "
                               "else the config's ReduceLROnPlateau patience, else 50",
    "train.log_every": "child.py --log-every N --progress-log logs/train.log",
    "train.logger": "logger (always set: a config's own logger is replaced, with a note): tensorboard writes "
                    "FairChem's own events (train/*, val/* per step) to logs/tensorboard/ (a resumed run drops the "
                    "events logged after its checkpoint); wandb: FairChem's wandb logger, files in logs/wandb/, "
                    "WANDB_MODE=offline unless set (environment or backend_env); none: no logger (child.py)",
    "train.wandb_project": "logger.project of train.logger=wandb (else the config's, else mlip-launch)",
    "train.config_yml": "the FairChem config (optional when the model comes from a manifest or checkpoint)",
    "train.dtype": "float32 is what FairChem computes in (nothing to change); float64, the schema default "
                   "(mace_run_train's), is not applied: FairChem models run in float32 (amp: train.amp)",
    "eval.split": "the LMDB FairChem predicts on",
    "eval.energy_only": "forces left out of the evaluation files and metrics",
    "eval.group_by": "eval/errors_by_group.csv and metrics.json by_group from this key of each record (info or a scalar field), read from the evaluated LMDB records",
    "eval.objective": "not passed to FairChem: an Optuna sweep reads it from the val records FairChem logs "
                      "(logs/metrics.jsonl: val_loss, val_energy_mae, val_forces_mae, ... as the config's evaluation "
                      "metrics name them) or from eval/metrics.json (evaluate)",
    "data.cache": "none / auto: FairChem's LmdbDataset streams records per batch (optim.num_workers); memory is "
                  "refused (FairChem has no graph cache)",
    "data.trust_pickles": "preflight skips its allow-list check of sampled records; FairChem's own reader "
                          "unpickles without an allow-list either way",
}

#: Keys FairChem has no meaning for: refused (one line each) when the user sets them.
REFUSED: Dict[str, str] = {
    "train.kernels": "picks the equivariant kernels of a MACE model; FairChem models have their own",
    "train.compile": "compiles the MACE training step; FairChem's trainer has no such option",
    "train.input_json": "a MACE model.json; FairChem backends take train.config_yml",
    "train.head_key": "FairChem models have a single head",
    "eval.heads": "evaluates each head of a multi-head MACE model; FairChem models have a single head",
    "train.stress_weight": "FairChem 1.10's equiformer_v2 and gemnet_oc models, the ones these backends run, "
                           "predict energy and forces only; its stress head rank2_symmetric_head needs a 'hydra' "
                           "model, which these backends do not run; train stress with backend=mace",
    "train.scheduler": "the scheduler is the FairChem config's optim.scheduler (set it with backend_args "
                       "--optim.scheduler=...)",
    "train.scheduler_step_unit": "FairChem steps its scheduler per optimizer step, or per validation for "
                                 "ReduceLROnPlateau",
    "train.cycle_steps": "FairChem has no cycles; validation/checkpoints follow optim.eval_every and "
                         "train.save_every",
    "train.drop_last": "FairChem's sampler always keeps the last batch",
    "train.progress_mininterval": "FairChem's progress bars have no refresh setting",
    "data.cache_budget_gb": "FairChem never caches graphs, so there is no budget to set",
    **{f"train.lora_{k}": "LoRA adapters (train.freeze=lora) are MACE-only" for k in ("rank", "alpha", "blocks")},
    "data.stats_samples": "FairChem computes no statistics from the data before training (its normalizers come "
                          "from the config or the checkpoint)",
}

OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}
_ADAM_PARAMS = {"betas", "eps", "weight_decay", "amsgrad", "foreach", "maximize", "capturable", "differentiable",
                "fused"}
OPTIMIZER_PARAMS = {"Adam": _ADAM_PARAMS, "AdamW": _ADAM_PARAMS,
                    "SGD": {"momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach",
                            "differentiable", "fused"}}
PLATEAU = "ReduceLROnPlateau"
TORCH_PLATEAU_PATIENCE = 10      # ReduceLROnPlateau's own default, when the config names no patience


#: data.* keys that are run keys too (how the data is read, not which data)
RUN_DATA_KEYS = ("data.batch_size", "data.cache", "data.cache_budget_gb", "data.stats_samples", "data.trust_pickles",
                 *REPLAY_KEY_DOCS)


def _run_key_values(spec: Any) -> Iterable[Tuple[str, Any, Any]]:
    """``(dotted key, value, schema default)`` of every train.*/eval.* key and data.batch_size."""
    from launcher.core.schema import RunSpec, get_key, iter_fields

    default = RunSpec()
    for key, _f, _t in iter_fields():
        if key.split(".", 1)[0] in ("train", "eval") or key in RUN_DATA_KEYS:
            yield key, get_key(spec, key), get_key(default, key)


def _same(key: str, value: Any, default: Any) -> bool:
    if key == "train.progress_bar":
        return str(value).lower() == str(default).lower()
    if isinstance(value, float) or isinstance(default, float):
        try:
            return value is not None and default is not None and float(value) == float(default)
        except (TypeError, ValueError):
            return False
    return value == default


def user_set_keys(spec: Any) -> Dict[str, Any]:
    """The run keys whose value differs from the schema default (what the user asked for)."""
    return {k: v for k, v, d in _run_key_values(spec) if not _same(k, v, d)}


def optim_scheduler(config: Dict[str, Any]) -> Optional[str]:
    optim = config.get("optim") if isinstance(config.get("optim"), dict) else {}
    return optim.get("scheduler")


def plateau_patience(config: Dict[str, Any]) -> Optional[int]:
    """The patience of the config's ReduceLROnPlateau scheduler, None when it has another scheduler."""
    if optim_scheduler(config) != PLATEAU:
        return None
    return int(config["optim"].get("patience", TORCH_PLATEAU_PATIENCE))


def refused_keys(spec: Any, config: Optional[Dict[str, Any]] = None) -> List[str]:
    """One line per run key the user set that this FairChem run cannot honour (``config``: the FairChem
    config with backend_args applied, when known)."""
    backend = spec.backend
    problems: List[str] = []
    for key, value in user_set_keys(spec).items():
        if key == "train.input_json":
            problems.append(f"train.input_json: only for backend=mace, not backend={backend} (FairChem backends take "
                            "train.config_yml)")
        elif key in REFUSED:
            problems.append(f"{key}: not supported by backend={backend} ({REFUSED[key]}); leave it unset")
        elif key not in KEY_MAP:
            problems.append(f"{key}: not supported by backend={backend}; leave it unset")
        elif key == "data.cache" and value == "memory":
            problems.append(f"data.cache: memory is not supported by backend={backend} (FairChem streams records; "
                            "use none or auto)")
        elif key == "train.freeze" and value not in (None, "none", "head_only"):
            why = "; LoRA adapters are MACE-only" if value == "lora" else ""
            problems.append(f"train.freeze: '{value}' is not supported by backend={backend} (head_only or null{why})")
        elif key == "train.early_stop_factor" and spec.task in ("train", "finetune", "resume") and not spec.data.val:
            problems.append(f"train.early_stop_factor: needs data.val with backend={backend} (it counts validations "
                            "without improvement)")
        elif key == "train.patience" and config is not None and spec.task in ("train", "finetune", "resume"):
            scheduler = optim_scheduler(config)
            if scheduler != PLATEAU:
                problems.append(f"train.patience: backend={backend} applies it to FairChem's ReduceLROnPlateau "
                                f"scheduler, but the config's optim.scheduler is {scheduler or 'unset (LambdaLR)'}; "
                                f"leave train.patience unset or add backend_args --optim.scheduler={PLATEAU}")
    return problems + replay_problems(spec)


def _note_set(notes: List[str], dotted: str, old: Any, new: Any, key: str) -> None:
    notes.append(f"{dotted}: {'unset' if old is _UNSET else old} -> {new} ({key})")


_UNSET = object()


def _set_loss_coefficient(config: Dict[str, Any], target: str, value: float, key: str, notes: List[str]) -> str:
    loss_fns = config.get("loss_functions")
    if isinstance(loss_fns, list) and loss_fns:
        found = False
        for i, entry in enumerate(loss_fns):
            if isinstance(entry, dict) and isinstance(entry.get(target), dict):
                old = entry[target].get("coefficient", 1)
                entry[target]["coefficient"] = value
                _note_set(notes, f"loss_functions[{i}].{target}.coefficient", old, value, key)
                found = True
        if not found:
            raise ConfigError(f"{key}: the FairChem config's loss_functions has no '{target}' loss to weight")
        return "loss_functions"
    legacy = {"energy": "energy_coefficient", "forces": "force_coefficient"}[target]
    optim = config["optim"]
    old = optim.get(legacy, _UNSET)
    optim[legacy] = value
    _note_set(notes, f"optim.{legacy}", old, value, key)
    return f"optim.{legacy}"


def apply_run_keys(config: Dict[str, Any], spec: Any, *, mode: str, n_train: Optional[int],
                   notes: List[str]) -> Dict[str, str]:
    """Apply the run keys the user set to ``config`` (in place); returns {dotted config key: run key}.

    Keys left at their schema defaults change nothing. ``train.save_every`` is applied by
    :func:`derive_config` (it needs the final batch size); CLI flags and child.py options by the backend.
    """
    wanted = user_set_keys(spec)
    optim = config["optim"]
    done: Dict[str, str] = {}

    def put(dotted_in_optim: str, key: str, value: Any) -> None:
        old = optim.get(dotted_in_optim, _UNSET)
        optim[dotted_in_optim] = value
        _note_set(notes, f"optim.{dotted_in_optim}", old, value, key)
        done[f"optim.{dotted_in_optim}"] = key

    if "data.batch_size" in wanted:
        put("eval_batch_size", "data.batch_size", int(spec.data.batch_size))
    if "train.num_workers" in wanted:
        put("num_workers", "train.num_workers", int(spec.train.num_workers))
    if "train.progress_bar" in wanted and str(spec.train.progress_bar).lower() == "false":
        old = config.get("hide_eval_progressbar", _UNSET)
        config["hide_eval_progressbar"] = True
        _note_set(notes, "hide_eval_progressbar", old, True, "train.progress_bar=false")
        done["hide_eval_progressbar"] = "train.progress_bar"
    if mode != "train":
        return done
    t = spec.train
    if "train.epochs" in wanted:
        put("max_epochs", "train.epochs", int(t.epochs))
    if "train.batch_size" in wanted:
        put("batch_size", "train.batch_size", int(t.batch_size))
    if "train.lr" in wanted:
        put("lr_initial", "train.lr", float(t.lr))
    if "train.optimizer" in wanted:
        name = OPTIMIZERS[t.optimizer]
        put("optimizer", "train.optimizer", name)
        params = optim.get("optimizer_params")
        if isinstance(params, dict):
            dropped = sorted(k for k in params if k not in OPTIMIZER_PARAMS[name])
            if dropped:
                optim["optimizer_params"] = {k: v for k, v in params.items() if k not in dropped}
                notes.append(f"optim.optimizer_params: {', '.join(dropped)} dropped ({name} does not take "
                             f"{'it' if len(dropped) == 1 else 'them'})")
    if "train.weight_decay" in wanted:
        wd = float(t.weight_decay)
        params = optim.get("optimizer_params")
        if not isinstance(params, dict):
            params = optim["optimizer_params"] = {}
        old = params.get("weight_decay", _UNSET)
        params["weight_decay"] = wd
        _note_set(notes, "optim.optimizer_params.weight_decay", old, wd, "train.weight_decay")
        done["optim.optimizer_params.weight_decay"] = "train.weight_decay"
        if "weight_decay" in optim:  # FairChem 1.10 reads optim.weight_decay first
            put("weight_decay", "train.weight_decay", wd)
    if "train.energy_weight" in wanted:
        done[_set_loss_coefficient(config, "energy", float(t.energy_weight), "train.energy_weight", notes)] = \
            "train.energy_weight"
    if "train.force_weight" in wanted:
        done[_set_loss_coefficient(config, "forces", float(t.force_weight), "train.force_weight", notes)] = \
            "train.force_weight"
    if "train.max_grad_norm" in wanted:
        if t.max_grad_norm is None:
            old = optim.pop("clip_grad_norm", _UNSET)
            notes.append(f"optim.clip_grad_norm: {'unset' if old is _UNSET else old} -> removed, no clipping "
                         "(train.max_grad_norm: null)")
            done["optim.clip_grad_norm"] = "train.max_grad_norm"
        else:
            put("clip_grad_norm", "train.max_grad_norm", float(t.max_grad_norm))
    if "train.ema_decay" in wanted:
        put("ema_decay", "train.ema_decay", float(t.ema_decay))
    return done


def apply_patience(config: Dict[str, Any], spec: Any, overridden: List[str], notes: List[str]) -> None:
    """train.patience -> optim.patience of a ReduceLROnPlateau scheduler (also one named in backend_args);
    an optim.patience given in backend_args stays."""
    if "train.patience" not in user_set_keys(spec) or optim_scheduler(config) != PLATEAU:
        return
    if "optim.patience" in overridden:
        notes.append("backend_args --optim.patience replaces what train.patience set")
        return
    optim = config["optim"]
    old = optim.get("patience", _UNSET)
    optim["patience"] = int(spec.train.patience)
    _note_set(notes, "optim.patience", old, optim["patience"], "train.patience")


def early_stop_evals(spec: Any, config: Dict[str, Any]) -> Optional[int]:
    """N of child.py's --early-stop: ceil(early_stop_factor x patience), patience = train.patience, else the
    config's ReduceLROnPlateau patience, else 50. None when train.early_stop_factor is null."""
    from_config = plateau_patience(config)
    return schema_early_stop_evals(spec.train, PLATEAU_PATIENCE_DEFAULT if from_config is None else from_config)
