"""Runs inside the FairChem environment: FairChem's CLI, then the checkpoint work that needs torch.

Standalone on purpose (stdlib + the FairChem env's torch/yaml; never imports the launcher): the
launcher process stays free of torch, and checkpoints are read and written by the same torch
that FairChem used.

    python child.py run [--post CKPT_DIR] [--mirror DIR] [training options] -- <fairchem CLI args>
                                                                 FairChem, then summarize CKPT_DIR
    python child.py serve                                        import FairChem, then run one command
                                                                 read from stdin: {"argv": [...], "cwd": DIR}
    python child.py summarize CKPT_DIR                           summary.json + weights.pt of CKPT_DIR
    python child.py weights-only SRC DST                         fine-tune start: model state only
    python child.py inspect CKPT                                 one JSON line: epoch, step, epochs_done
    python child.py export CKPT OUT_DIR                          weights.pt + summary.json of one file

Training options of ``run`` (FairChem v1 has no such knobs; see ``patches.TrainOptions``):

    --accum-steps N        one optimizer update every N micro-batches (FairChem's step = one update)
    --freeze head_only     train only the model's energy/force output head (equiformer_v2, gemnet_oc)
    --early-stop N         stop after N validations in a row without a better primary val metric
    --log-every N          every N optimizer updates one progress line on stdout (and in --progress-log)
    --progress-log FILE    append the progress lines (and the early-stop line) to FILE
    --logs-dir DIR         FairChem's logger writes under DIR: tensorboard events in DIR/tensorboard/, wandb's files
                           in DIR/wandb/ (see patches.install_logger); a config's logger 'none': no logger
    --run-name NAME        the wandb run's name when no --identifier names it
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile

if __package__:
    from trainers.fairchem import patches
    from trainers.fairchem.checkpoint_io import SaveGuard, die, load, save, write_json
else:  # run as a script in the FairChem env: this folder is on sys.path
    import patches
    from checkpoint_io import SaveGuard, die, load, save, write_json

MODEL_KEYS = ("state_dict", "normalizers", "elementrefs", "scale_dict", "config", "ema")
SUMMARY = "summary.json"
WEIGHTS = "weights.pt"
RUN_FLAGS = ("--post", "--mirror", "--accum-steps", "--freeze", "--early-stop", "--log-every", "--progress-log",
             "--logs-dir", "--run-name")


def _plain(x):
    """JSON-able copy (tensors -> numbers/lists)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return str(x)


def _epochs_done(ckpt):
    epoch = ckpt.get("epoch")
    return None if epoch is None else int(math.floor(float(epoch) + 1e-6))


def _val_metrics(ckpt):
    vm = ckpt.get("val_metrics") or {}
    out = {}
    for k, v in vm.items():
        out[k] = _plain(v.get("metric") if isinstance(v, dict) else v)
    return out


def _strip(state_dict):
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def versions():
    from importlib import metadata

    out = {}
    for name in ("fairchem-core", "torch", "torch-geometric", "e3nn", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _as_checkpoint(obj, src):
    """A FairChem checkpoint, or a bare state dict (our exported weights) wrapped as one."""
    if isinstance(obj, dict) and "state_dict" in obj:
        return obj
    if isinstance(obj, dict) and obj and all(hasattr(v, "shape") for v in obj.values()):
        return {"state_dict": obj, "normalizers": {}}
    raise SystemExit(f"{src}: neither a FairChem checkpoint nor a state dict")


def info(ckpt):
    cfg = ckpt.get("config") or {}
    return {
        "epoch": _plain(ckpt.get("epoch")),
        "step": _plain(ckpt.get("step")),
        "epochs_done": _epochs_done(ckpt),
        "best_val_metric": _plain(ckpt.get("best_val_metric")),
        "primary_metric": ckpt.get("primary_metric"),
        "val_metrics": _val_metrics(ckpt),
        "model": _plain(cfg.get("model", {})),
        "trainer": cfg.get("trainer"),
        "has_optimizer": "optimizer" in ckpt,
        "n_parameters": int(sum(v.numel() for v in ckpt["state_dict"].values())) if "state_dict" in ckpt else None,
        "versions": versions(),
    }


def export(src, out_dir):
    """weights.pt (bare state dict, no 'module.' prefix) and summary.json of one checkpoint."""
    ckpt = _as_checkpoint(load(src), src)
    os.makedirs(out_dir, exist_ok=True)
    save(_strip(ckpt["state_dict"]), os.path.join(out_dir, WEIGHTS))
    summary = info(ckpt)
    summary["source"] = os.path.abspath(src)
    write_json(summary, os.path.join(out_dir, SUMMARY))
    return summary


def summarize(ckpt_dir):
    """Summary of a FairChem checkpoint folder; weights from best_checkpoint.pt, else checkpoint.pt."""
    last = os.path.join(ckpt_dir, "checkpoint.pt")
    best = os.path.join(ckpt_dir, "best_checkpoint.pt")
    if not os.path.isfile(last) and not os.path.isfile(best):
        return None
    source = best if os.path.isfile(best) else last
    summary = export(source, ckpt_dir)
    summary["best"] = source == best
    if os.path.isfile(last) and source != last:
        summary["last"] = info(load(last))
        summary["last"].pop("model", None)
        for key in ("epoch", "step", "epochs_done", "best_val_metric", "primary_metric"):
            if summary.get(key) is None:  # best_checkpoint.pt carries no training state
                summary[key] = summary["last"].get(key)
    else:
        summary["last"] = {k: summary[k] for k in ("epoch", "step", "epochs_done")}
    write_json(summary, os.path.join(ckpt_dir, SUMMARY))
    return summary


def weights_only(src, dst):
    ckpt = _as_checkpoint(load(src), src)
    out = {k: ckpt[k] for k in MODEL_KEYS if k in ckpt}
    out.setdefault("normalizers", {})
    save(out, dst)


def _arg(args, name):
    return args[args.index(name) + 1] if name in args[:-1] else None


def read_run_config(fairchem_args):
    """The config the FairChem run reads (``--config-yml``), read once for what this process needs of it."""
    path = _arg(fairchem_args, "--config-yml")
    if not path:
        return {}
    import yaml

    with open(path) as fh:
        cfg = yaml.safe_load(fh) or {}
    return cfg if isinstance(cfg, dict) else {}


def config_trainer(config, fairchem_args):
    """The trainer the run's config names (then a ``--trainer=`` override), or None for a task name."""
    name = config.get("trainer")
    for a in fairchem_args:
        if a.startswith("--trainer="):
            name = a.split("=", 1)[1]
    return name if isinstance(name, str) and name not in patches.TASK_NAMES else None


def check_gpu_extensions(fairchem_args, config):
    """GemNet-OC on a GPU needs torch-scatter/torch-sparse built with CUDA kernels; say so before FairChem starts."""
    import torch

    if "--cpu" in fairchem_args or not torch.cuda.is_available():
        return
    model = config.get("model")
    name = str(model.get("name", "")) if isinstance(model, dict) else ""
    if "gemnet" not in name:
        return
    import torch_scatter  # noqa: F401 - registers the ops
    import torch_sparse  # noqa: F401

    if torch.ops.torch_sparse.cuda_version() <= 0 or torch.ops.torch_scatter.cuda_version() <= 0:
        print("error: torch-scatter/torch-sparse in the FairChem env have no CUDA kernels, which GemNet-OC needs on "
              "a GPU: rebuild the env with MLIP_FAIRCHEM_CUDA_EXT=1 scripts/setup-fairchem-env (needs nvcc 12.x), "
              "or use device=cpu", flush=True)
        raise SystemExit(2)


def _whole(flag, value):
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(n) != str(value).strip():
        die(f"{flag} must be a whole number >= 1, got {value!r}")
    return n


def parse_run_args(args):
    """``run``'s own options (all before ``--``) -> (post_dir, mirror_dir, TrainOptions, FairChem's arguments)."""
    values, rest = {}, list(args)
    while rest[:1] and rest[0] in RUN_FLAGS:
        if len(rest) < 2:
            die(f"{rest[0]} needs a value")
        values[rest[0]], rest = rest[1], rest[2:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    freeze = values.get("--freeze")
    if freeze is not None and freeze not in patches.FREEZE_CHOICES:
        die(f"--freeze must be one of {', '.join(patches.FREEZE_CHOICES)}, got {freeze!r}")
    whole = {flag: _whole(flag, values[flag]) for flag in ("--accum-steps", "--early-stop", "--log-every")
             if flag in values}
    options = patches.TrainOptions(accum_steps=whole.get("--accum-steps", 1), freeze=freeze,
                                   early_stop=whole.get("--early-stop"), log_every=whole.get("--log-every"),
                                   progress_log=values.get("--progress-log"), logs_dir=values.get("--logs-dir"),
                                   run_name=values.get("--run-name"))
    return values.get("--post"), values.get("--mirror"), options, rest


def run(post_dir, fairchem_args, mirror_dir=None, options=None):
    sys.argv = ["fairchem", *fairchem_args]
    guard = SaveGuard()
    guard.install()  # before the slow imports: a stop signal during them ends the process cleanly
    config = read_run_config(fairchem_args)
    check_gpu_extensions(fairchem_args, config)
    from fairchem.core._cli import main

    options = options or patches.TrainOptions()
    patches.install_atomic_checkpoints(mirror_dir, guard, trainer=config_trainer(config, fairchem_args))
    patches.install_training_options(options)
    patches.install_logger(options)
    import time

    t0 = time.perf_counter()
    rank = int(os.environ.get("RANK", "0"))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        run_rank(fairchem_args)
    else:
        main()
    t1 = time.perf_counter()
    if post_dir and rank == 0:
        with guard:
            summarize(post_dir)
        print(f"[mlip-launch] FairChem {t1 - t0:.2f} s; checkpoint summary {time.perf_counter() - t1:.2f} s",
              flush=True)


def run_rank(fairchem_args):
    """One rank of FairChem's distributed mode, started by torchrun (``--num-gpus N`` = the world size).

    FairChem's own CLI would start N processes of its own (``elastic_launch``) in which our patches of its
    trainer are not installed; each rank here runs FairChem's ``Runner`` directly, and FairChem's
    ``distutils.setup`` joins the process group from torchrun's variables.
    """
    from fairchem.core._cli import runner_wrapper
    from fairchem.core.common.flags import flags
    from fairchem.core.common.utils import build_config, setup_logging

    setup_logging()
    args, override_args = flags.get_parser().parse_known_args(fairchem_args)
    if args.num_gpus != int(os.environ["WORLD_SIZE"]):
        die(f"--num-gpus {args.num_gpus} but torchrun started {os.environ['WORLD_SIZE']} ranks")
    runner_wrapper(build_config(args, override_args))


def serve():
    """Import torch and FairChem now, then run the one command the launcher sends when it has decided it.

    Started by the launcher as soon as it knows a FairChem run is coming (see
    ``trainers/fairchem/prewarm.py``), so these imports overlap the launcher's own set-up. EOF on
    stdin (the launcher did not need us, or went away) ends the process.
    """
    import time

    t0 = time.perf_counter()
    SaveGuard().install()
    import fairchem.core._cli  # noqa: F401 - the slow part
    from fairchem.core.common.utils import setup_imports

    setup_imports()
    t1 = time.perf_counter()
    line = sys.stdin.readline()
    if not line.strip():
        return
    t2 = time.perf_counter()
    msg = json.loads(line)
    os.chdir(msg["cwd"])
    os.environ.update(msg.get("env") or {})   # per-invocation variables (TMPDIR) the runner decided later
    tempfile.tempdir = None
    # "then waited": the part of the launcher's set-up that the imports did not cover
    print(f"[mlip-launch] FairChem interpreter started early: imports {t1 - t0:.2f} s overlapped the launcher's "
          f"set-up, then waited {t2 - t1:.2f} s for the command", flush=True)
    main(msg["argv"])


def main(argv):
    if not argv:
        raise SystemExit(__doc__)
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        post_dir, mirror_dir, options, fairchem_args = parse_run_args(rest)
        run(post_dir, fairchem_args, mirror_dir, options)
    elif cmd == "serve" and not rest:
        serve()
    elif cmd == "summarize" and len(rest) == 1:
        summarize(rest[0])
    elif cmd == "weights-only" and len(rest) == 2:
        weights_only(*rest)
    elif cmd == "inspect" and len(rest) == 1:
        print(json.dumps(info(_as_checkpoint(load(rest[0]), rest[0])), default=str))
    elif cmd == "export" and len(rest) == 2:
        export(*rest)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
