"""``launch-run`` / ``python -m launcher.run``: the plain run.yaml front door.

    launch-run --config run.yaml [--run NAME ...] [--dry-run] [--set KEY=VALUE ...]

Same RunSpec, same preflight, same submission module as the Hydra door. A ``runs:`` list goes
out as one job array through the preset its ``launcher:`` map names (default: in-process).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import List, Optional

from launcher.core.errors import EXIT_FAILED, EXIT_PREEMPTED, ConfigError, ConfigErrors


def _parser() -> argparse.ArgumentParser:
    from launcher.reporting import OneLineParser

    p = OneLineParser(prog="launch-run", description=__doc__.split("\n\n")[0].strip(),
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", required=True, help="plain run.yaml: one run, or a runs: list")
    p.add_argument("--run", action="append", default=[], metavar="NAME",
                   help="only the run(s) with this name (repeatable; default: all)")
    p.add_argument("--dry-run", action="store_true", help="validate everything and print what would run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a schema key in every selected run (dotted key, YAML value)")
    p.add_argument("--to-overrides", action="store_true",
                   help="print the equivalent `launch` command-line overrides, one line per run, each "
                        "token quoted for bash (paste the line after `launch`), and exit")
    p.add_argument("--to-experiment", metavar="DIR",
                   help="write each run as DIR/NAME.yaml, a Hydra experiment (`launch +experiment=NAME`), and exit")
    return p


def _apply_sets(specs, sets: List[str]):
    from launcher.core.readers import parse_yaml
    from launcher.core.schema import spec_from_dict
    from launcher.core.specio import deep_merge, expand_dotted

    if not sets:
        return specs
    patch = {}
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set: expected KEY=VALUE, got '{item}'")
        k, v = item.split("=", 1)
        patch[k] = parse_yaml(v, where=f"--set {k}") if v else None
    patch = expand_dotted(patch, source="--set")
    return [spec_from_dict(deep_merge(s.to_dict(), patch), source="--set") for s in specs]


def load_specs(config: str, names: List[str], sets: List[str]):
    from launcher.core.specio import parse_run_file, resolve_paths, select_runs

    supplied = [item.split("=", 1)[0] for item in sets if "=" in item]  # --set may name a required key
    specs, launcher_map = parse_run_file(Path(config), supplied=supplied)
    specs = select_runs(specs, names, source=config)
    if sets:
        specs = [resolve_paths(s, Path.cwd()) for s in _apply_sets(specs, sets)]
    return specs, launcher_map


def launcher_params_from_map(launcher_map: dict):
    """``launcher: {preset: slurm, partition: x}`` -> LauncherParams, through the same preset files."""
    from dataclasses import fields

    from launcher.core.readers import load_yaml
    from launcher.params import LauncherParams
    from launcher.resolvers import conf_dir

    m = dict(launcher_map)
    preset = m.pop("preset", "inprocess")
    presets = conf_dir() / "hydra" / "launcher"
    path = presets / f"{preset}.yaml"
    if not isinstance(preset, str) or not _FILE_NAME.fullmatch(preset) or not path.is_file():
        opts = sorted(p.stem for p in presets.glob("*.yaml"))
        raise ConfigError(f"launcher.preset: no preset '{preset}'; available: {', '.join(opts)}")
    base = dict(load_yaml(path, key="launcher.preset") or {})
    base.pop("defaults", None)
    names = {f.name for f in fields(LauncherParams)}
    merged = {**base, **m}
    unknown = sorted(k for k in merged if k not in names)
    if unknown:
        raise ConfigError(f"launcher: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    return LauncherParams(**{k: v for k, v in merged.items() if not (isinstance(v, str) and "${" in v)})


_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def write_experiments(specs: list, launcher_map: dict, out: Path) -> List[Path]:
    """``--to-experiment``: each run as ``out/NAME.yaml``, all or nothing.

    Run names must be plain file names (no folder, no ``..``), and every run must pass the schema's checks;
    nothing is written for a file set with any problem, and a write that fails removes what it wrote.
    """
    from launcher.core.atomic import atomic_write_text
    from launcher.translate import spec_to_experiment_yaml

    bad = [s.run_name for s in specs if not _FILE_NAME.fullmatch(s.run_name) or ".." in s.run_name]
    if bad:
        raise ConfigError(f"--to-experiment: run name '{bad[0]}' is not a plain file name (letters, digits, "
                          f"_ . - and no '..'); set 'name' to one")
    _check_exportable(specs, launcher_map)
    texts = [(out / f"{s.run_name}.yaml", spec_to_experiment_yaml(s)) for s in specs]
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--to-experiment: {out} is a file, expected a folder")
    first_new = next((p for p in [*reversed(out.parents), out] if not p.exists()), None)
    written: List[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for path, text in texts:
            atomic_write_text(path, text)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        if first_new is not None:
            import shutil

            shutil.rmtree(first_new, ignore_errors=True)
        raise
    return written


def _check_exportable(specs: list, launcher_map: dict) -> None:
    """What is wrong with a run wherever it is launched (schema values, the launcher map); file checks are left
    to the launch, which may happen on another machine."""
    from launcher.core.schema import validate
    from launcher.pipeline import checked_params

    checked_params(launcher_params_from_map(launcher_map))
    problems = [f"[{s.run_name}] {p}" if len(specs) > 1 else p for s in specs for p in validate(s)]
    if problems:
        raise ConfigErrors(problems)


def main(argv: Optional[List[str]] = None) -> int:
    from launcher.reporting import config_error_message, exit_for, report_config_error

    args = _parser().parse_args(argv)
    try:
        return _main(args)
    except ConfigError as e:
        report_config_error(config_error_message(e) or [str(e)])
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - one line (exit 2 for a path problem, else 1; ^C 130)
        exit_for(e)


def _main(args: argparse.Namespace) -> int:
    specs, launcher_map = load_specs(args.config, args.run, args.set)
    if args.to_overrides:
        from launcher.translate import spec_to_shell_line

        for s in specs:
            print(spec_to_shell_line(s))
        return 0
    if args.to_experiment:
        for path in write_experiments(specs, launcher_map, Path(args.to_experiment)):
            print(path)
        return 0
    if args.dry_run:
        for s in specs:
            s.dry_run = True
    from launcher import pipeline

    params = pipeline.checked_params(launcher_params_from_map(launcher_map))
    early = None
    try:
        if len(specs) == 1 and params.cluster == "inprocess" and not specs[0].dry_run:
            from launcher.backends import prestart

            early = prestart([], specs[0])  # a backend's slow start-up overlaps preflight and set-up
        labels = [s.run_name for s in specs]
        # model_in=NAME -> the verified cached file (a bare word resolved against the file's folder or the cwd)
        req = pipeline.prepare(specs, params, Path(args.config).resolve().parent / "sweeps" / Path(args.config).stem,
                               bases=[Path(args.config).parent, Path.cwd()], labels=labels,
                               overrides=[[f"name={n}"] for n in labels], prestarted=early)
        result = pipeline.launch(req, guarded=True)
    finally:
        if early is not None:
            early.close()
    if result is None:  # a dry run
        return 0
    if result.failed:
        for o in result.failed:
            print(f"error: run {labels[o.index]} {o.state}: {o.error} (run_dir {o.run_dir}, log {o.log_path})",
                  file=sys.stderr)
        return EXIT_FAILED
    if any(o.state == "PREEMPTED" for o in result.outcomes):
        return EXIT_PREEMPTED   # stopped by a signal after checkpointing: launch again to resume
    return 0


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
