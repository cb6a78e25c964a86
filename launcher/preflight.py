"""Every check that can fail before a job is queued, for every run of a sweep, all problems listed.

Nothing here imports torch: a dry run must stay fast. GPU presence is read from the driver's
device files; the job itself confirms it with torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from launcher.core.env import gpu_visible
from launcher.core.errors import ConfigError, NotImplementedBackend
from launcher.core.schema import RunSpec, cuda_index, is_cuda, validate

DATA_SPLITS = ("train", "val", "test")


def _check_file(key: str, value: Optional[str], problems: List[str], *, kind: str = "file") -> bool:
    if not value:
        return False
    p = Path(value)
    if not p.exists():
        problems.append(f"{key}: {kind} not found: {p}")
        return False
    if kind == "file" and not p.is_file():
        problems.append(f"{key}: expected a file, got a directory: {p}")
        return False
    return True


def _check_json(key: str, value: Optional[str], problems: List[str], *, want: type) -> None:
    from launcher.core.layout import read_json_file

    if not _check_file(key, value, problems):
        return
    try:
        obj = read_json_file(Path(value), key=key)
    except ConfigError as e:
        problems.append(str(e))
        return
    if not isinstance(obj, want):
        problems.append(f"{key}: {value} must hold a JSON {want.__name__}")


def _check_dataset(key: str, path: str, problems: List[str]) -> None:
    from launcher.demo_data import ensure_if_demo

    try:
        ensure_if_demo(path)
    except Exception as e:  # generation failed: report it as this key's problem
        problems.append(f"{key}: could not generate the demo dataset at {path}: {e}")
        return
    try:
        from data.datasets import check_readable
    except ImportError:  # data layer not installed: existence is all we can check
        if not Path(path).exists():
            problems.append(f"{key}: dataset not found: {path}")
        return
    try:
        check_readable(path)
    except ConfigError as e:
        msg = str(e)
        problems.append(msg if msg.startswith(key) else f"{key}: {msg}")


def check_spec(spec: RunSpec, *, cluster: str = "inprocess", gpus_per_node: Optional[int] = None) -> List[str]:
    """All problems of one spec (empty = ready to run)."""
    problems = list(validate(spec))
    for split in DATA_SPLITS:
        path = getattr(spec.data, split)
        if path:
            _check_dataset(f"data.{split}", path, problems)
    for key, path in (("data.indices_path", spec.data.indices_path),
                      ("data.train_indices.indices_path", spec.data.train_indices.indices_path),
                      ("data.val_indices.indices_path", spec.data.val_indices.indices_path),
                      ("data.test_indices.indices_path", spec.data.test_indices.indices_path)):
        _check_json(key, path, problems, want=list)
    if spec.model_in:
        _check_file("model_in", spec.model_in, problems, kind="path")
    if spec.model.manifest:
        _check_json("model.manifest", spec.model.manifest, problems, want=dict)
    if spec.model.weights:
        _check_file("model.weights", spec.model.weights, problems)

    if is_cuda(spec.device):  # cuda or cuda:N (the job checks N against the GPUs torch sees)
        index = cuda_index(spec.device)
        if cluster == "slurm":
            if not gpus_per_node:
                problems.append(f"device: {spec.device} needs GPUs on the SLURM nodes: use hydra/launcher=slurm_gpu "
                                "(or set hydra.launcher.gpus_per_node), or device=cpu")
            elif index is not None and index >= gpus_per_node:
                problems.append(f"device: {spec.device} but each SLURM job gets {gpus_per_node} GPU(s) "
                                f"(cuda:0..cuda:{gpus_per_node - 1})")
        elif not gpu_visible():
            problems.append(f"device: {spec.device} requested but no GPU is visible here; use device=cpu (or device=auto)")

    if spec.run_dir:
        from launcher.job import state_problem

        sp = state_problem(spec)
        if sp:
            problems.append(sp)

    from launcher.backends import backend_problems

    seen_keys = {p.split(":", 1)[0] for p in problems}
    # the backend's own rules and files; a key the generic checks already reported is not reported twice
    problems.extend(p for p in backend_problems(spec) if p.split(":", 1)[0] not in seen_keys)
    return problems


def check_sweep(
    specs: Sequence[RunSpec],
    labels: Optional[Sequence[str]] = None,
    *,
    cluster: str = "inprocess",
    gpus_per_node: Optional[int] = None,
) -> List[str]:
    """Problems of every point, each prefixed with its label when there are several points."""
    labels = list(labels) if labels is not None else [s.run_name for s in specs]
    problems: List[str] = []
    many = len(specs) > 1
    for spec, label in zip(specs, labels):
        for p in check_spec(spec, cluster=cluster, gpus_per_node=gpus_per_node):
            problems.append(f"[{label}] {p}" if many else p)
    seen: Dict[str, str] = {}
    for spec, label in zip(specs, labels):
        rd = str(Path(spec.run_dir).resolve()) if spec.run_dir else None
        if rd and rd in seen:
            problems.append(f"[{label}] run_dir: {rd} is also the run_dir of [{seen[rd]}]; every run needs its own")
        elif rd:
            seen[rd] = label
    return problems


def describe(spec: RunSpec) -> str:
    """What would execute (the trainer entry or the full native command line) and the run_dir state."""
    from launcher.backends import get_backend
    from launcher.core.layout import RunLayout
    from launcher.job import describe_state
    from trainers.api import JobContext

    layout = RunLayout.of(spec.run_dir)
    try:
        what = get_backend(spec.backend).describe(JobContext(spec=spec, layout=layout))
    except NotImplementedBackend as e:
        what = f"(not runnable: {e})"
    return f"would execute: {what}\nrun_dir: {layout.root} ({describe_state(spec, layout)})"


def print_dry_run(specs: Sequence[RunSpec], labels: Sequence[str], echo: Callable[[str], None] = print) -> None:
    from launcher.core.specio import dump_run_yaml

    for spec, label in zip(specs, labels):
        echo(f"=== {label}")
        echo(dump_run_yaml(spec).rstrip())
        echo(describe(spec))
    echo(f"dry run: {len(specs)} run(s) validated; nothing was started")
