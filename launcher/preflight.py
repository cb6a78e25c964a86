"""Every check that can fail before a job is queued, for every run of a sweep, all problems listed.

Nothing here imports torch: a dry run must stay fast. GPU presence is read from the driver's
device files; the job itself confirms it with torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from launcher.core.env import gpu_visible
from launcher.core.errors import ConfigError, NotImplementedBackend
from launcher.core.schema import TRAINING_TASKS, RunSpec, cuda_index, is_cuda, validate
from launcher.model_files import model_file_problems

DATA_SPLITS = ("train", "val", "test")


def _check_file(key: str, value: Optional[str], problems: List[str], *, kind: str = "file") -> bool:
    if not value:
        return False
    p = Path(value)
    if not p.exists():
        problems.append(f"{key}: {kind} not found: {p}")
        return False
    special = _special_file(key, p)
    if special:
        problems.append(special)
        return False
    if kind == "file" and not p.is_file():
        problems.append(f"{key}: expected a file, got a directory: {p}")
        return False
    return True


def _special_file(key: str, p: Path) -> Optional[str]:
    """The problem of a path that is neither a regular file nor a folder (a FIFO would block its reader)."""
    import os
    import stat

    from launcher.core.readers import file_kind

    try:
        mode = os.stat(p).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return f"{key}: {p} is a {file_kind(mode)}, expected a regular file or a folder"


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _check_dataset(key: str, path: str, problems: List[str], trust_pickles: bool = False) -> Optional[int]:
    """Problems of one dataset, read as the job reads it; its number of entries when readable."""
    from launcher.demo_data import ensure_if_demo

    try:
        ensure_if_demo(path)
    except Exception as e:  # generation failed: report it as this key's problem
        problems.append(f"{key}: could not generate the demo dataset at {path}: {_one_line(e)}")
        return None
    try:
        from data.datasets import check_readable, count
    except ImportError:  # data layer not installed: existence is all we can check
        if not Path(path).exists():
            problems.append(f"{key}: dataset not found: {path}")
        return None
    try:
        check_readable(path, trust_pickles=trust_pickles)
        return count(path)
    except ConfigError as e:
        msg = _one_line(e)
        problems.append(msg if msg.startswith(key) else f"{key}: {msg}")
    except Exception as e:  # noqa: BLE001 - a corrupt or unreadable file is this key's problem
        problems.append(f"{key}: cannot read {path} ({type(e).__name__}: {_one_line(e)})")
    return None


def _split_reads(spec: RunSpec) -> Dict[str, bool]:
    """The splits a task reads -> whether each is the active one (``data.indices`` applies to it)."""
    if spec.task == "export":
        return {}
    if spec.task in ("evaluate", "infer"):
        return {spec.eval.split: True}
    return {split: split == "train" for split in DATA_SPLITS}


def _check_indices(spec: RunSpec, sizes: Dict[str, int], problems: List[str]) -> None:
    """The index selection of every split the job reads, computed as the job computes it."""
    from data.indices import select_split_indices

    reported = {p.split(":", 1)[0] for p in problems}  # the schema's own checks came first
    for split, active in _split_reads(spec).items():
        if split not in sizes:
            continue
        try:
            select_split_indices(spec.data, split, sizes[split], active=active)
        except ConfigError as e:
            msg = _one_line(e)
            msg = msg if msg.startswith("data.") else f"data.{split}: {msg}"
            if msg.split(":", 1)[0] not in reported:
                problems.append(msg)


def _check_values(spec: RunSpec, sizes: Dict[str, int], problems: List[str]) -> None:
    """The values of a seeded sample of the records each split's selection holds (its first, last and a spread
    across it: :func:`data.datasets.sample_positions`): no atoms or NaN/inf values are refused naming the file
    and entry. Only selected records are read; the job's reader checks every other record it loads."""
    from data.datasets import check_values, sample_positions
    from data.indices import select_split_indices

    reported = {p.split(":", 1)[0] for p in problems}
    for split, active in _split_reads(spec).items():
        key = f"data.{split}"
        if split not in sizes or key in reported:
            continue
        try:
            idx = select_split_indices(spec.data, split, sizes[split], active=active)
        except ConfigError:
            continue  # reported by _check_indices
        try:
            check_values(getattr(spec.data, split), [int(idx[j]) for j in sample_positions(len(idx))],
                         trust_pickles=bool(spec.data.trust_pickles))
        except ConfigError as e:
            problems.append(f"{key}: {_one_line(e)}")
        except Exception:  # noqa: BLE001 - readability was checked above; the job's reader gives its verdict
            continue


def _check_run_dir(run_dir: str, problems: List[str]) -> bool:
    """run_dir must be a folder, or creatable: a file there, or an unwritable parent, fails only at
    job start otherwise. False when it is unusable (its state is then not read)."""
    import os

    root = Path(run_dir)
    if root.exists() and not root.is_dir():
        problems.append(f"run_dir: {root} is a file, expected a directory")
        return False
    node = root
    while not node.exists() and node != node.parent:
        node = node.parent
    if not node.is_dir():
        problems.append(f"run_dir: {root} cannot be created: {node} is a file")
        return False
    if not os.access(node, os.W_OK | os.X_OK):
        what = "is not writable" if node == root else f"cannot be created: no write permission in {node}"
        problems.append(f"run_dir: {root} {what}")
        return False
    too_long = _name_too_long(root, node)
    if too_long:
        problems.append(f"run_dir: {root} cannot be created: {too_long}")
        return False
    return True


def _name_too_long(root: Path, existing: Path) -> Optional[str]:
    """The file system's name limits for the parts of ``root`` below ``existing`` (the job would fail on
    them after making the folders above)."""
    import os

    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        path_max = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in root.relative_to(existing).parts if root != existing else ():
        if len(os.fsencode(part)) > name_max:
            return f"the name '{part[:40]}...' is {len(os.fsencode(part))} bytes, the file system allows {name_max}"
    full = len(os.fsencode(str(root.absolute())))
    if full >= path_max:
        return f"the path is {full} bytes, the file system allows {path_max - 1}"
    return None


def data_notes(spec: RunSpec) -> List[str]:
    """Warnings (not errors) about data a run would read: training on data without forces.

    Reads the first record's raw bytes only (a pickled record names its ``forces`` attribute), so a dry
    run still imports neither torch nor PyG.
    """
    if spec.task not in TRAINING_TASKS or not spec.data.train or spec.train.force_weight <= 0:
        return []
    from data.datasets import detect_format, sample_carries

    try:
        if detect_format(spec.data.train) != "lmdb":
            return []
    except Exception:  # noqa: BLE001 - preflight reported unreadable data already
        return []
    if sample_carries(spec.data.train, "forces")[0] is False:
        return [f"data.train: {spec.data.train} holds no forces (first structure); the force loss "
                f"(train.force_weight={spec.train.force_weight}) has nothing to fit: set train.force_weight=0 "
                "for an energy-only model"]
    return []


def check_spec(spec: RunSpec, *, cluster: str = "inprocess", gpus_per_node: Optional[int] = None) -> List[str]:
    """All problems of one spec (empty = ready to run)."""
    return check_point(spec, cluster=cluster, gpus_per_node=gpus_per_node)[0]


def check_point(spec: RunSpec, *, cluster: str = "inprocess",
                gpus_per_node: Optional[int] = None) -> Tuple[List[str], Optional[str]]:
    """(all problems of one spec, the state of its run_dir as :func:`launcher.job.classify` found it, or None
    where it was not read): the state travels on to the dry run's description and a single run's job."""
    problems = list(validate(spec))
    sizes: Dict[str, int] = {}
    for split in DATA_SPLITS:
        path = getattr(spec.data, split)
        special = _special_file(f"data.{split}", Path(path)) if path else None
        if special:
            problems.append(special)
        elif path:
            n = _check_dataset(f"data.{split}", path, problems, bool(spec.data.trust_pickles))
            if n is not None:
                sizes[split] = n
    for head, path in spec.eval.heads.items():   # each head's own test data (task=evaluate)
        special = _special_file(f"eval.heads.{head}", Path(path)) if path else None
        if special or not path:
            problems.append(special or f"eval.heads.{head}: expected the path of that head's data (LMDB)")
        else:
            _check_dataset(f"eval.heads.{head}", path, problems, bool(spec.data.trust_pickles))
    from launcher.replay_preflight import replay_input_problems

    problems += replay_input_problems(spec, _check_dataset, _special_file)
    index_files_ok = True
    for key, path in (("data.indices_path", spec.data.indices_path),
                      ("data.train_indices.indices_path", spec.data.train_indices.indices_path),
                      ("data.val_indices.indices_path", spec.data.val_indices.indices_path),
                      ("data.test_indices.indices_path", spec.data.test_indices.indices_path)):
        if path and not _check_file(key, path, problems):
            index_files_ok = False
    if index_files_ok:
        _check_indices(spec, sizes, problems)
        _check_values(spec, sizes, problems)
    special = [_special_file(k, Path(v)) for k, v in (("model_in", spec.model_in), ("model.manifest",
               spec.model.manifest), ("model.weights", spec.model.weights)) if v]
    if any(special):  # a FIFO would block the readers below
        problems += [x for x in special if x]
    else:
        from launcher.models import model_input_problems

        found = model_input_problems(spec)  # every refusal the job's model loading would make
        problems += found or model_file_problems(spec)  # then pickled model files against the allow-list

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

    kind = None
    if spec.run_dir and _check_run_dir(spec.run_dir, problems):
        from launcher.core.layout import RunLayout
        from launcher.job import classify, state_problem

        kind = classify(spec, RunLayout.of(spec.run_dir))
        sp = state_problem(spec, kind)
        if sp:
            problems.append(sp)

    from launcher.backends import backend_problems

    seen_keys = {p.split(":", 1)[0] for p in problems}
    # the backend's own rules and files; a key the generic checks already reported is not reported twice
    problems.extend(p for p in backend_problems(spec) if p.split(":", 1)[0] not in seen_keys)
    return problems, kind


def check_sweep(specs: Sequence[RunSpec], labels: Optional[Sequence[str]] = None, **kwargs: Any) -> List[str]:
    """Problems of every point (:func:`check_points` without the run_dirs' states)."""
    return check_points(specs, labels, **kwargs)[0]


def check_points(
    specs: Sequence[RunSpec],
    labels: Optional[Sequence[str]] = None,
    *,
    cluster: str = "inprocess",
    gpus_per_node: Optional[int] = None,
    warn: Optional[Callable[[str], None]] = None,
    notes: bool = True,
    params: Optional[Any] = None,
) -> Tuple[List[str], List[Optional[str]]]:
    """Problems of every point, each prefixed with its label when there are several points, and the state of
    each point's run_dir (:func:`check_point`).

    ``params`` (the door's :class:`launcher.params.LauncherParams`) adds the launcher settings each point's
    backend refuses (:func:`launcher.submit.backend_launch_problems`, also run at submission), so that a dry
    run refuses them as the launch does.

    When there are none, the points' warnings (:func:`data_notes`) go to ``warn`` (default: stderr);
    ``notes=False`` skips them (their data was read, and they were shown, once already).
    """
    labels = list(labels) if labels is not None else [s.run_name for s in specs]
    problems: List[str] = []
    states: List[Optional[str]] = []
    many = len(specs) > 1
    for spec, label in zip(specs, labels):
        point, state = check_point(spec, cluster=cluster, gpus_per_node=gpus_per_node)
        states.append(state)
        if params is not None:
            from launcher.submit import backend_launch_problems

            point += [p for p in backend_launch_problems([spec], params) if p not in point]
        for p in point:
            problems.append(f"[{label}] {p}" if many else p)
    seen: Dict[str, str] = {}
    for spec, label in zip(specs, labels):
        rd = str(Path(spec.run_dir).resolve()) if spec.run_dir else None
        if rd and rd in seen:
            problems.append(f"[{label}] run_dir: {rd} is also the run_dir of [{seen[rd]}]; every run needs its own")
        elif rd:
            seen[rd] = label
    if not problems and notes:
        import sys

        warn = warn or (lambda line: print(line, file=sys.stderr))
        shown: Dict[str, None] = {}  # once each: a sweep's points usually share their data
        looked = set()
        for spec in specs:
            what = (spec.task, spec.data.train, spec.train.force_weight > 0)
            if what not in looked:
                looked.add(what)
                shown.update(dict.fromkeys(data_notes(spec)))
        for note in shown:
            warn(f"warning: {note}")
    return problems, states


def describe(spec: RunSpec, state: Optional[str] = None) -> str:
    """What would execute (the trainer entry or the full native command line) and the run_dir state
    (``state``: preflight's :func:`launcher.job.classify` verdict, when there is one)."""
    from launcher.backends import get_backend
    from launcher.core.layout import RunLayout
    from launcher.job import describe_state
    from trainers.api import JobContext

    layout = RunLayout.of(spec.run_dir)
    try:
        what = get_backend(spec.backend).describe(JobContext(spec=spec, layout=layout))
    except NotImplementedBackend as e:
        what = f"(not runnable: {e})"
    return f"would execute: {what}\nrun_dir: {layout.root} ({describe_state(spec, layout, state)})"


def print_dry_run(specs: Sequence[RunSpec], labels: Sequence[str], echo: Callable[[str], None] = print,
                  states: Optional[Sequence[Optional[str]]] = None) -> None:
    from launcher.core.specio import dump_run_yaml

    for spec, label, state in zip(specs, labels, states or [None] * len(specs)):
        echo(f"=== {label}")
        echo(dump_run_yaml(spec).rstrip())
        echo(describe(spec, state))
    echo(f"dry run: {len(specs)} run(s) validated; nothing was started")
