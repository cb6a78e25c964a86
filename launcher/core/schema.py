"""The unified run schema: the one place every key, default and cross-field rule is declared.

Both front doors (the Hydra app and the plain ``run.yaml``) end in a :class:`RunSpec`. The
dataclasses are registered in Hydra's ConfigStore, so unknown keys and wrong types are refused
by OmegaConf itself; :func:`validate` holds the rules that span several keys. Every field's
``metadata["doc"]`` feeds the generated reference in ``docs/schema.md``.

This module must stay cheap to import: no torch, mace or fairchem.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from launcher.core.errors import ConfigError, ConfigErrors
from launcher.core.plugins import backend_names, default_backend
from launcher.core.lora_spec import LORA_BLOCKS, lora_problems
from launcher.core.replay_spec import REPLAY_SELECT, ReplaySpec, replay_problems
from launcher.core.spec_messages import _did_you_mean, _first_line, _type_error_message, interpolation_message

SCHEMA_VERSION = 1

BACKENDS = backend_names()  # the entry-point group mlip_launch.backends (launcher.core.plugins)
DEFAULT_BACKEND = default_backend()  # the Hydra door's backend group (conf/config.yaml), for both doors alike
TASKS = ("train", "finetune", "resume", "evaluate", "infer", "export")
TRAINING_TASKS = ("train", "finetune", "resume")
DEVICES = ("cuda", "cpu", "auto", "cuda:N")   # cuda:N = the GPU with index N (a torch device string)
DATA_FORMATS = ("lmdb",)
REQUIRED_RUN_KEYS = ("backend", "task", "run_dir")   # every run of a plain run.yaml names them
PLATEAU_PATIENCE_DEFAULT = 50                         # train.patience: null (mace_run_train's value)

# Keys whose value must be one of a fixed set: checked by validate(), listed in the docs.
CHOICES: Dict[str, tuple] = {
    "backend": BACKENDS,
    "task": TASKS,
    "device": DEVICES,
    "data.format": DATA_FORMATS,
    "data.cache": ("auto", "memory", "none"),
    "train.optimizer": ("adam", "adamw", "sgd"),
    "train.scheduler": ("plateau", "cosine", "step", "none"),
    "train.scheduler_step_unit": ("epoch", "cycle"),
    "train.progress_bar": ("auto", "true", "false"),
    "train.freeze": (None, "none", "head_only", "lora"),
    "train.lora_blocks": ("all", *LORA_BLOCKS,
                          *(f"{a}+{b}" for i, a in enumerate(LORA_BLOCKS) for b in LORA_BLOCKS[i + 1:])),
    "train.dtype": ("float64", "float32"),
    "train.kernels": ("auto", "e3nn", "cueq", "oeq"),
    "train.logger": ("tensorboard", "wandb", "none"),
    "eval.split": ("test", "val", "train"),
    "data.replay.select": REPLAY_SELECT,
}

# eval.objective: what an Optuna sweep (hydra/sweeper=optuna) minimises, ``val_<metric>``. Every one is an
# error (lower is better), so the study's direction follows from it. Training tasks read <metric> from the
# run's validation records (logs/metrics.jsonl, the lowest value reached): each backend declares the names its
# trainings record (``trainers.api.BackendBase.objectives``); evaluate reads eval/metrics.json (EVAL_OBJECTIVES).
# OBJECTIVE_NAMES is the vocabulary, the metric names of launcher.core.metrics in either spelling.
EVAL_OBJECTIVES = ("val_energy_mae", "val_energy_rmse", "val_energy_mae_per_atom", "val_energy_rmse_per_atom",
                   "val_force_mae", "val_force_rmse", "val_stress_mae", "val_stress_rmse")
OBJECTIVE_NAMES = ("val_loss", "val_energy_rmse_per_atom", "val_energy_mae_per_atom", "val_force_rmse", "val_force_mae",
                   "val_stress_rmse", "val_stress_mae", "val_energy_mae", "val_energy_mse", "val_energy_rmse",
                   "val_energy_per_atom_mae", "val_energy_per_atom_mse", "val_forces_mae", "val_forces_mse",
                   "val_forces_rmse", "val_forces_magnitude_error")
CHOICES["eval.objective"] = OBJECTIVE_NAMES

_CUDA_INDEX = re.compile(r"cuda:(0|[1-9][0-9]*)")


def cuda_index(device: str) -> Optional[int]:
    """N of a ``cuda:N`` device string, else None (``cuda`` itself included)."""
    m = _CUDA_INDEX.fullmatch(str(device))
    return int(m.group(1)) if m else None


def is_cuda(device: str) -> bool:
    """``cuda`` or ``cuda:N``: the run needs a GPU (``auto`` does not)."""
    return device == "cuda" or cuda_index(device) is not None


def device_ok(device: Any) -> bool:
    return device in ("cuda", "cpu", "auto") or (isinstance(device, str) and cuda_index(device) is not None)


# Keys holding filesystem paths: resolved to absolute paths by the front doors.
PATH_KEYS = (
    "run_dir",
    "model_in",
    "model.manifest",
    "model.weights",
    "backend_python",
    "data.train",
    "data.val",
    "data.test",
    "data.indices_path",
    "data.train_indices.indices_path",
    "data.val_indices.indices_path",
    "data.test_indices.indices_path",
    "train.input_json",
    "train.config_yml",
)


def _f(default: Any = dataclasses.MISSING, doc: str = "", factory: Any = None) -> Any:
    """A dataclass field carrying its documentation."""
    if factory is not None:
        return field(default_factory=factory, metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass
class IndexSampling:
    """Per-split sampling of dataset indices (used when no explicit ``data.indices`` apply)."""

    max_samples: Optional[int] = _f(None, "keep at most this many structures of the split (null = all)")
    shuffle: bool = _f(False, "shuffle before taking max_samples (otherwise the first ones are kept)")
    seed: int = _f(0, "seed of the shuffle (numpy PCG64; same indices on every machine)")
    indices_path: Optional[str] = _f(None, "JSON list of indices of this split to start from")


@dataclass
class DataSpec:
    """Datasets: a FairChem-format LMDB file, or a folder of ``*.lmdb`` shards read as one."""

    format: str = _f("lmdb", "dataset format; lmdb is the only one: a FairChem v1 LMDB file, a folder of "
                             "*.lmdb shards read as one, or ASE-database .aselmdb files (other formats: "
                             "convert them with launch-data convert)")
    train: Optional[str] = _f(None, "training LMDB file or folder of *.lmdb shards")
    val: Optional[str] = _f(None, "validation LMDB (best model and early stop use it)")
    test: Optional[str] = _f(None, "test LMDB (evaluate/infer read it unless eval.split says otherwise)")
    indices: Optional[List[int]] = _f(None, "explicit indices of the active split (overrides all sampling)")
    indices_path: Optional[str] = _f(None, "JSON list of indices of the active split (ignored if data.indices is set)")
    train_indices: IndexSampling = _f(factory=IndexSampling, doc="sampling of the train split")
    val_indices: IndexSampling = _f(factory=IndexSampling, doc="sampling of the val split")
    test_indices: IndexSampling = _f(factory=IndexSampling, doc="sampling of the test split")
    batch_size: int = _f(16, "batch size of evaluate / infer")
    cache: str = _f("auto", "how the MACE trainer holds the graphs of train/val: none (stream: train.num_workers "
                            "read, unpickle and build graphs per batch; each process reads only its share) | memory "
                            "(the first epoch streams as with none and keeps the graphs it builds, packed, in the "
                            "training process; later epochs build only what is missing; no pass before the first "
                            "update) | auto (memory when the estimate, from 64 seeded graphs, fits "
                            "data.cache_budget_gb, else none; train.log states both); FairChem always streams")
    cache_budget_gb: float = _f(4.0, "data.cache=auto caches only when the estimated size of all graphs of one "
                                     "process is at most this many GB, and stops keeping graphs (the rest stream) "
                                     "once the cache reaches it")
    stats_samples: int = _f(2000, "the statistics a new model needs before training (E0s average, scale/shift, "
                                  "avg_num_neighbors) are computed from at most this many training structures "
                                  "(all of them when fewer), stated in train.log and stored in the manifest")
    trust_pickles: bool = _f(False, "read LMDB records without the allow-list of data classes (PyG Data, torch tensors, "
                                    "numpy arrays; records naming anything else are refused); only for files you trust: "
                                    "a pickle can run code. FairChem backends read records with FairChem's own "
                                    "unrestricted reader: for them preflight checks the first, middle, last and 3 records "
                                    "spread across each shard (seeded: the same ones every run). Also model files (model_in, model.weights, a manifest's "
                                    "weights: a mace .model, a FairChem .pt): without it they are read through an "
                                    "allow-list of the model classes MACE, e3nn, torch.nn and FairChem checkpoints "
                                    "need, and a file naming anything else is refused in preflight, naming it")
    replay: ReplaySpec = _f(factory=ReplaySpec, doc="replay of pretraining structures during a fine-tune")


@dataclass
class TrainSpec:
    """Training knobs. Core-trainer (MACE) keys, plus the FairChem ones at the end."""

    input_json: Optional[str] = _f(None, "MACE model.json (mace_run_train hyperparameter names); required for backend=mace task=train")
    epochs: int = _f(10, "number of epochs")
    batch_size: int = _f(8, "training batch size (per process)")
    num_workers: int = _f(0, "DataLoader worker processes")
    seed: Optional[int] = _f(None, "training seed (null = the top-level seed)")
    lr: float = _f(0.01, "learning rate (mace_run_train's default)")
    weight_decay: float = _f(5.0e-7, "weight decay (mace_run_train's default)")
    optimizer: str = _f("adam", "adam (amsgrad, as mace_run_train) | adamw | sgd")
    amp: bool = _f(False, "mixed precision: autocast to bfloat16 (float16 with a gradient scaler on a GPU without "
                          "bfloat16); the loss and the optimizer state stay float32; needs train.dtype=float32. On "
                          "CPU: bfloat16 autocast as well (accuracy, not speed: no faster than float32 there)")
    accum_steps: int = _f(1, "micro-batches accumulated per optimizer update")
    max_grad_norm: Optional[float] = _f(10.0, "gradient clipping norm (null = off)")
    save_every: int = _f(1, "write checkpoints/checkpoint.pt every N epochs (or cycles)")
    log_every: Optional[int] = _f(None, "every N optimizer updates, one progress line on the console and in logs/train.log "
                                        "(step, epoch, loss, lr, structures/s) and a train record in logs/metrics.jsonl "
                                        "(null = about 20 per epoch)")
    progress_bar: str = _f("auto", "tqdm progress bars: auto (only on a TTY) | true | false")
    progress_mininterval: float = _f(0.5, "minimum seconds between refreshes of every tqdm bar of the run "
                                          "(reading data, building graphs, training, predicting)")
    logger: str = _f("tensorboard", "where training scalars go besides logs/metrics.jsonl and logs/curves.png (drawn "
                                    "every validation whatever this is): tensorboard (event files under "
                                    "logs/tensorboard/: train/val loss, val metrics, lr, throughput per optimizer "
                                    "step; FairChem runs: FairChem's own events) | wandb "
                                    "(Weights & Biases, offline unless WANDB_MODE is set; files under logs/wandb/; "
                                    "needs the wandb extra) | none")
    wandb_project: Optional[str] = _f(None, "wandb project of train.logger=wandb (null = mlip-launch); the wandb run "
                                            "is named after the run (name, else run_dir's name)")
    freeze: Optional[str] = _f(None, "null | head_only (train only the readout of train.head_key) | lora (MACE: "
                                     "low-rank adapters on the equivariant linear layers of train.lora_blocks train, "
                                     "every base weight stays as it was; artifacts and exports hold the adapters "
                                     "merged into a plain model); head_only and lora need task=finetune or resume")
    lora_rank: int = _f(8, "train.freeze=lora: rank of the adapters; each irrep path of an adapted layer gets "
                           "factors of this many channels (a path with fewer channels in or out gets its full rank); "
                           ">= 1 and at most the widest path of the adapted layers")
    lora_alpha: Optional[float] = _f(None, "train.freeze=lora: the adapters' update is scaled by lora_alpha / "
                                           "lora_rank (null = lora_rank: scale 1); > 0")
    lora_blocks: str = _f("all", "train.freeze=lora: MACE blocks whose equivariant linear layers (e3nn o3.Linear) "
                                 "get adapters: all (interactions+products+readouts) | interactions | products | "
                                 "readouts | two of them joined by '+', e.g. interactions+products")
    energy_weight: float = _f(1.0, "weight of the energy loss")
    force_weight: float = _f(1.0, "weight of the force loss")
    stress_weight: float = _f(0.0, "weight of the stress loss (mean squared error of the 3x3 stress components, "
                                   "eV/Å^3, ASE's sign convention, as the data stores it); > 0 needs stress labels in "
                                   "data.train (structures without one get weight 0); 0 = off. Validation reports "
                                   "stress_rmse/stress_mae whenever the data has stress, whatever the weight")
    head_key: str = _f("omat_pbe", "head of a multi-head model to train/evaluate (ignored by single-head models)")
    early_stop_factor: Optional[float] = _f(None, "stop training after ceil(early_stop_factor x patience) consecutive "
                                                  "evaluations without val loss improvement (patience: the plateau "
                                                  "patience in effect, see train.patience); any value > 0, 1 included; "
                                                  "null = off")
    patience: Optional[int] = _f(None, "patience of the ReduceLROnPlateau scheduler: evaluations without val loss "
                                       "improvement before it lowers the lr (>= 1; null = 50 for MACE, the FairChem "
                                       "config's own patience, else 50); also the unit of train.early_stop_factor "
                                       "(patience alone never stops training)")
    scheduler: str = _f("plateau", "plateau (ReduceLROnPlateau, factor 0.8, patience train.patience) | cosine (to 0 over the run) | step (halves the lr 4 times over the run) | none")
    scheduler_step_unit: str = _f("epoch", "step the scheduler per epoch | per cycle")
    cycle_steps: int = _f(0, "optimizer updates per cycle (<= 0 off); evaluation and checkpoint every cycle; forces drop_last")
    drop_last: bool = _f(False, "drop the last incomplete training batch")
    dtype: str = _f("float64", "float64 (as mace_run_train) | float32 (~2x faster on CPU)")
    ema_decay: Optional[float] = _f(None, "exponential moving average of weights (e.g. 0.99; null = off)")
    kernels: str = _f("auto", "equivariant kernels of a MACE model in train/finetune/resume/evaluate/infer: auto "
                              "(cueq on CUDA when cuEquivariance's GPU ops import, else e3nn; train.log says which "
                              "and why) | e3nn | cueq (NVIDIA cuEquivariance; extra [cueq], on GPUs [cuda]) | oeq "
                              "(OpenEquivariance, CUDA only; extra [oeq]). Weights are always stored in e3nn form, "
                              "so any run may resume or be evaluated with other kernels")
    compile: bool = _f(False, "torch.compile the MACE training step (mace-torch's compile preparation, dynamic "
                              "graph sizes); see README Performance for where it pays off")
    config_yml: Optional[str] = _f(None, "FairChem config for equiformer_v2 / gemnet_oc: required for task=train; optional when model.manifest or model_in brings the model's config (then it supplies the rest)")
    identifier: Optional[str] = _f(None, "FairChem run identifier")


@dataclass
class EvalSpec:
    """Evaluate / infer settings."""

    energy_only: bool = _f(False, "skip forces: evaluate/predict energies only")
    amp: bool = _f(False, "autocast during evaluate/infer, as train.amp (bfloat16, float16 on a GPU without it; "
                          "needs train.dtype=float32)")
    split: str = _f("test", "which data split evaluate/infer reads: test | val | train")
    objective: str = _f("val_loss", "what an Optuna sweep (launch -m hydra/sweeper=optuna) minimises: val_<metric>, "
                                    "the lowest value of <metric> in the run's validation records (logs/metrics.jsonl) "
                                    "for train/finetune/resume, eval/metrics.json of eval.split for evaluate. MACE: "
                                    "val_loss, val_energy_rmse_per_atom, val_energy_mae_per_atom, val_force_rmse, "
                                    "val_force_mae; FairChem: val_loss, val_energy_mae, val_forces_mae, ... (what its "
                                    "config's evaluation metrics log); evaluate: val_energy_mae, val_energy_rmse, "
                                    "val_energy_(mae|rmse)_per_atom, val_force_mae, val_force_rmse. Always minimised")
    heads: Dict[str, str] = _f(factory=dict, doc="task=evaluate of a multi-head MACE model: head -> that head's test data (LMDB file or folder), each head evaluated on its own data (the sampling of data.<eval.split>_indices applies to each) into eval/heads/<head>/ and eval/metrics_by_head.csv; a model fine-tuned from a base model also gets the base's errors per head, eval/compare_base_by_head.csv; {} = off")
    group_by: Optional[str] = _f("config_type", "key of each structure's info (or a scalar LMDB field) that evaluate groups errors by (eval/errors_by_group.csv, metrics.json by_group); structures without it: group '(none)'; a key no structure has: a warning, not an error; null = no grouping")


@dataclass
class ModelSpec:
    """Where a model to fine-tune, resume, evaluate or export comes from (besides model_in)."""

    manifest: Optional[str] = _f(None, "artifacts/manifest.json of an earlier run (preferred for finetune/resume)")
    weights: Optional[str] = _f(None, "state_dict path (optional if the manifest names its weights)")


@dataclass
class RunSpec:
    """One run: everything a job needs, whichever front door produced it."""

    backend: str = _f(DEFAULT_BACKEND, "a registered backend: mace | equiformer_v2 | gemnet_oc (docs/architecture.md: adding one); "
                              "required in every run of a run.yaml (the default is the Hydra door's backend group)")
    task: str = _f("train", "train | finetune | resume | evaluate | infer | export; required in every run of a run.yaml "
                            "(the default is the Hydra door's task group)")
    run_dir: Optional[str] = _f(None, "output directory of the run (required; the Hydra door defaults it to runs/DATE/TIME)")
    name: Optional[str] = _f(None, "run name (selects runs of a runs: list with --run; defaults to the run_dir's name)")
    model_in: Optional[str] = _f(None, "checkpoint / model file (required for finetune, export; resume defaults to the run's own checkpoint)")
    model: ModelSpec = _f(factory=ModelSpec, doc="model source via manifest/weights")
    device: str = _f("cuda", "cuda | cuda:N (the GPU with index N) | cpu | auto (cuda when available)")
    seed: int = _f(0, "global seed (train.seed defaults to it)")
    backend_python: Optional[str] = _f(None, "interpreter of the FairChem environment (default: the one scripts/setup-fairchem-env made)")
    backend_env: Dict[str, str] = _f(factory=dict, doc="extra environment variables for native backend runs")
    backend_args: List[str] = _f(factory=list, doc="extra command-line args for native backend runs (applied last)")
    overwrite: bool = _f(False, "replace a different run already in run_dir (otherwise an error)")
    dry_run: bool = _f(False, "validate and print what would run; run nothing")
    data: DataSpec = _f(factory=DataSpec, doc="datasets")
    train: TrainSpec = _f(factory=TrainSpec, doc="training")
    eval: EvalSpec = _f(factory=EvalSpec, doc="evaluation")

    # ---- derived values every consumer should use instead of re-deriving them ----
    @property
    def effective_seed(self) -> int:
        return self.seed if self.train.seed is None else int(self.train.seed)

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        return (self.run_dir or "").rstrip("/").rsplit("/", 1)[-1] or "run"

    def to_dict(self) -> Dict[str, Any]:
        """Plain nested dict (the content of ``run_dir/run.yaml``)."""
        return dataclasses.asdict(self)

    def identity(self) -> Dict[str, Any]:
        """The keys that decide whether two specs are 'the same run' for resume/skip decisions.

        Task and execution flags are left out: resuming a ``train`` run with ``task=resume`` or
        relaunching it with ``dry_run`` is still the same run.
        """
        d = self.to_dict()
        for k in ("task", "dry_run", "overwrite", "name", "backend_env", "device"):
            d.pop(k, None)
        # how the same maths runs (kernels, compilation) is not what the run is: it may resume with other ones
        for k in ("num_workers", "progress_bar", "progress_mininterval", "log_every", "logger", "wandb_project",
                  "kernels", "compile"):
            d["train"].pop(k, None)
        d["eval"].pop("objective", None)  # read by the sweep after the run; the run itself ignores it
        return d


def plateau_patience(train: TrainSpec) -> int:
    """ReduceLROnPlateau's patience: ``train.patience``, or 50 when it is null."""
    return PLATEAU_PATIENCE_DEFAULT if train.patience is None else int(train.patience)


def early_stop_evals(train: TrainSpec, default_patience: int = PLATEAU_PATIENCE_DEFAULT) -> Optional[int]:
    """Consecutive evaluations without val improvement that stop training:
    ``ceil(early_stop_factor x patience)`` (at least 1), or None when ``train.early_stop_factor`` is null.
    ``patience`` is ``train.patience``, else ``default_patience`` (a backend whose config names its own
    plateau patience passes that)."""
    if train.early_stop_factor is None:
        return None
    patience = default_patience if train.patience is None else int(train.patience)
    return max(1, math.ceil(float(train.early_stop_factor) * patience - 1e-9))


def log_every_updates(train: TrainSpec, updates_per_epoch: int) -> int:
    """Optimizer updates between two progress lines: ``train.log_every``, or about 20 lines per epoch."""
    return int(train.log_every) if train.log_every else max(1, int(updates_per_epoch) // 20)


# --------------------------------------------------------------------------------------------
# Walking the schema (docs, translator, hypothesis tests all use these)
# --------------------------------------------------------------------------------------------

def iter_fields(cls: type = RunSpec, prefix: str = ""):
    """Yield ``(dotted_key, field, type)`` for every leaf key of the schema."""
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            yield from iter_fields(t, key + ".")
        else:
            yield key, f, t


def default_of(key: str) -> Any:
    """The schema default of the leaf ``key`` (a fresh copy for lists and dicts)."""
    for k, f, _t in iter_fields():
        if k == key:
            return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
    raise KeyError(key)


def leaf_keys() -> List[str]:
    return [k for k, _, _ in iter_fields()]


def section_keys(cls: type) -> List[str]:
    return [f.name for f in dataclasses.fields(cls)]


def get_key(spec: Any, dotted: str) -> Any:
    obj = spec
    for part in dotted.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def set_key(spec: Any, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    obj = spec
    for part in parts[:-1]:
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    if isinstance(obj, dict):
        obj[parts[-1]] = value
    else:
        setattr(obj, parts[-1], value)


# --------------------------------------------------------------------------------------------
# Building and validating
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _structured_base() -> Any:
    """The schema as a read-only OmegaConf node, built once (building it costs ~40 ms; merges copy it)."""
    from omegaconf import OmegaConf

    base = OmegaConf.structured(RunSpec)
    OmegaConf.set_readonly(base, True)
    return base


def spec_from_dict(raw: Dict[str, Any], *, source: str = "config") -> RunSpec:
    """Build a RunSpec from a nested mapping, refusing unknown keys and wrong types.

    The OmegaConf structured merge gives the same checks the Hydra door gets; its exceptions
    are turned into one-line messages naming the key and the valid keys.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of run keys, got {type(raw).__name__}")
    base = _structured_base()
    try:
        merged = OmegaConf.merge(base, raw)
    except ConfigKeyError as e:
        raise ConfigError(_key_error_message(e, source)) from None
    except ValidationError as e:
        raise ConfigError(_type_error_message(e, source)) from None
    except OmegaConfBaseException as e:
        raise ConfigError(interpolation_message(e, source) or f"{source}: {_first_line(str(e))}") from None
    try:
        spec = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:  # an interpolation that does not resolve (${oc.env:UNSET}, ...)
        raise ConfigError(interpolation_message(e, source) or _type_error_message(e, source)) from None
    assert isinstance(spec, RunSpec)
    return spec


def _key_error_message(e: Exception, source: str) -> str:
    full_key = getattr(e, "full_key", None) or ""
    key = full_key or _first_line(str(e))
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    cls = RunSpec
    if parent:
        for part in parent.split("."):
            import typing

            cls = typing.get_type_hints(cls).get(part, cls)
    options = section_keys(cls) if dataclasses.is_dataclass(cls) else leaf_keys()
    leaf = full_key.rsplit(".", 1)[-1]
    where = f"'{parent}'" if parent else "the top level"
    return (
        f"{source}: unknown key '{key}'{_did_you_mean(leaf, options)}; valid keys at {where}: "
        + ", ".join(options)
    )


@functools.lru_cache(maxsize=1)
def _leaf_types() -> Dict[str, Any]:
    return {k: t for k, _f, t in iter_fields()}


def coerce_leaf(key: str, value: Any, *, source: str = "command line") -> Any:
    """Check and convert one leaf value exactly as OmegaConf's typed nodes would.

    Lets a sweep derive hundreds of points from one composed base without re-merging the
    whole schema per point.
    """
    import typing

    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from omegaconf.nodes import BooleanNode, FloatNode, IntegerNode, StringNode

    t = _leaf_types().get(key)
    if t is None:
        raise ConfigError(_key_error_message(_KeyLike(key), source))
    optional = typing.get_origin(t) is typing.Union and type(None) in typing.get_args(t)
    base = [a for a in typing.get_args(t) if a is not type(None)][0] if optional else t
    try:
        if value is None:
            if not optional:
                raise ConfigError(f"{source}: bad value for '{key}': None is not allowed (expected {base.__name__})")
            return None
        node_cls = {bool: BooleanNode, int: IntegerNode, float: FloatNode, str: StringNode}.get(base)
        if node_cls is not None:
            return node_cls(value=value)._value()
        origin, args = typing.get_origin(base), typing.get_args(base)
        if origin is list:
            return OmegaConf.to_container(ListConfig(content=value, element_type=args[0]))
        if origin is dict:
            return OmegaConf.to_container(DictConfig(content=value, key_type=args[0], element_type=args[1]))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: bad value for '{key}': {_first_line(str(e))}") from None
    raise ConfigError(f"{source}: bad value for '{key}': unsupported type {t}")  # pragma: no cover


class _KeyLike(Exception):
    def __init__(self, full_key: str) -> None:
        super().__init__(full_key)
        self.full_key = full_key


def validate(spec: RunSpec) -> List[str]:
    """Cross-field rules every backend shares. Returns every problem found (empty list = valid), one
    line each; a backend's own rules are its ``check()`` (run by preflight)."""
    from launcher.core.numbers import number_problems

    numbers = number_problems(spec, _leaf_types())
    unusable = {line.split(":", 1)[0] for line in numbers}  # their range rules would only repeat them
    return numbers + [line for line in _rules(spec) if line.split(":", 1)[0] not in unusable]


def _rules(spec: RunSpec) -> List[str]:
    p: List[str] = []
    for key, options in CHOICES.items():
        value = get_key(spec, key)
        if isinstance(value, str) and key == "train.progress_bar":
            value = value.lower()
        if key == "device":
            if not device_ok(value):
                p.append(f"device: '{value}' is not one of cuda, cuda:N (N a GPU index: 0, 1, ...), cpu, auto")
        elif key == "data.format":
            if value not in options:
                p.append(f"data.format: '{value}' is not supported; the only allowed value is lmdb (FairChem LMDB "
                         f"files, folders of *.lmdb shards, .aselmdb; convert others with launch-data convert)")
        elif value not in options:
            p.append(f"{key}: '{value}' is not one of {', '.join(str(o) for o in options if o is not None)}")
    if not spec.run_dir:
        p.append("run_dir: required (the run's output directory)")
    t = spec.train
    positive = {"train.epochs": t.epochs, "train.batch_size": t.batch_size, "train.accum_steps": t.accum_steps,
                "train.save_every": t.save_every, "data.batch_size": spec.data.batch_size}
    for key, value in positive.items():
        if value is None or value < 1:
            p.append(f"{key}: must be >= 1, got {value}")
    if not (spec.data.cache_budget_gb >= 0 and math.isfinite(spec.data.cache_budget_gb)):
        p.append(f"data.cache_budget_gb: must be a number >= 0, got {spec.data.cache_budget_gb}")
    if spec.data.stats_samples is None or spec.data.stats_samples < 1:
        p.append(f"data.stats_samples: must be >= 1, got {spec.data.stats_samples}")
    if t.num_workers < 0:
        p.append(f"train.num_workers: must be >= 0, got {t.num_workers}")
    if t.lr <= 0:
        p.append(f"train.lr: must be > 0, got {t.lr}")
    if t.weight_decay < 0:
        p.append(f"train.weight_decay: must be >= 0, got {t.weight_decay}")
    if t.log_every is not None and t.log_every < 1:
        p.append(f"train.log_every: must be >= 1 or null, got {t.log_every}")
    if t.max_grad_norm is not None and t.max_grad_norm <= 0:
        p.append(f"train.max_grad_norm: must be > 0 or null, got {t.max_grad_norm}")
    if t.progress_mininterval < 0:
        p.append(f"train.progress_mininterval: must be >= 0, got {t.progress_mininterval}")
    if t.ema_decay is not None and not (0.0 < t.ema_decay < 1.0):
        p.append(f"train.ema_decay: must be in (0, 1) or null, got {t.ema_decay}")
    if t.early_stop_factor is not None and not (t.early_stop_factor > 0 and math.isfinite(t.early_stop_factor)):
        p.append(f"train.early_stop_factor: must be > 0 or null, got {t.early_stop_factor}")
    if t.patience is not None and t.patience < 1:
        p.append(f"train.patience: must be >= 1 or null, got {t.patience}")
    if t.energy_weight < 0 or t.force_weight < 0 or (t.energy_weight == 0 and t.force_weight == 0
                                                      and not t.stress_weight > 0):
        p.append("train.energy_weight/train.force_weight: must be >= 0 and not both 0 (unless train.stress_weight > 0)")
    if not (t.stress_weight >= 0 and math.isfinite(t.stress_weight)):
        p.append(f"train.stress_weight: must be a number >= 0, got {t.stress_weight}")
    if t.cycle_steps > 0 and not t.drop_last:
        p.append("train.drop_last: must be true when train.cycle_steps > 0 (cycles count full batches)")
    if t.scheduler_step_unit == "cycle" and t.cycle_steps <= 0:
        p.append("train.scheduler_step_unit: 'cycle' needs train.cycle_steps > 0")
    for split in ("train_indices", "val_indices", "test_indices"):
        ms = getattr(spec.data, split).max_samples
        if ms is not None and ms < 1:
            p.append(f"data.{split}.max_samples: must be >= 1 or null, got {ms}")

    task = spec.task
    has_model = bool(spec.model_in or spec.model.manifest or spec.model.weights)
    if task in ("finetune", "export") and not has_model:
        p.append(f"model_in: required for task={task} (or model.manifest / model.weights)")
    if task in ("evaluate", "infer") and not has_model:
        p.append(f"model_in: required for task={task} (the model to evaluate; or model.manifest)")
    if task in TRAINING_TASKS and not spec.data.train:
        if not (task == "resume"):
            p.append(f"data.train: required for task={task}")
    if spec.eval.heads and task != "evaluate":
        p.append(f"eval.heads: only task=evaluate reads it (task={task}); leave it unset")
    if task in ("evaluate", "infer"):
        split = spec.eval.split
        if not getattr(spec.data, split, None) and not (task == "evaluate" and spec.eval.heads):
            p.append(f"data.{split}: required for task={task} with eval.split={split}")
    if t.freeze in ("head_only", "lora") and task not in ("finetune", "resume"):
        p.append(f"train.freeze: {t.freeze} needs task=finetune or resume (a pretrained model to freeze), "
                 f"not task={task}")
    p += lora_problems(spec)
    p += replay_problems(spec)
    return p


def check(spec: RunSpec) -> RunSpec:
    """Validate and raise one ConfigErrors listing every problem."""
    problems = validate(spec)
    if problems:
        raise ConfigErrors(problems)
    return spec

