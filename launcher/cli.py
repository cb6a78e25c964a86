"""``launch``: the Hydra front door. Parse, build the RunSpec, preflight, dispatch; nothing more.

Errors in configuration or input end as ``error: ...`` lines and exit code 2 (Hydra's own
composition errors included); a failed job exits 1.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, List, Optional, Tuple

from launcher.core.errors import EXIT_FAILED, EXIT_PREEMPTED, ConfigError
from launcher.reporting import config_error_message, debug, exit_for, report_config_error


def _run_single(cfg: Any, prestarted: Optional[Any] = None) -> None:
    """Hydra's task function for ``launch`` without ``-m``: one run, submitted like a sweep of one."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        _run_single_checked(cfg, prestarted)
    except ConfigError as e:  # exit here: Hydra would add its own multi-line report
        report_config_error(config_error_message(e) or [str(e)])
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - one line here: past this point Hydra would add its own line
        # an interpolation of the composed config that does not resolve is an input error naming its key
        exit_for(_with_key(cfg, e) if isinstance(e, OmegaConfBaseException) else e)


def _with_key(cfg: Any, exc: BaseException) -> BaseException:
    """``exc`` with the key it is about: an error raised by ``cfg.get`` names none, so resolve the run's
    config (Hydra's own node aside) once more to find the key that fails."""
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    if getattr(exc, "full_key", None):
        return exc
    try:
        run_cfg = cfg.copy()
        with open_dict(run_cfg):
            run_cfg.pop("hydra", None)
        OmegaConf.to_container(run_cfg, resolve=True)
    except OmegaConfBaseException as located:
        return located
    return exc


def default_run_dir() -> str:
    """``runs/DATE/TIME`` (relative to the directory ``launch`` started in): run_dir when none is given."""
    import time

    return time.strftime("runs/%Y-%m-%d/%H-%M-%S")


def _run_single_checked(cfg: Any, prestarted: Optional[Any]) -> None:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from launcher import pipeline
    from launcher.sweep import launcher_params
    from launcher.translate import spec_from_hydra_cfg

    hc = HydraConfig.get()
    cwd = Path(hc.runtime.cwd)
    if cfg.get("run_dir") in (None, ""):
        with open_dict(cfg):
            cfg.run_dir = default_run_dir()
    spec = spec_from_hydra_cfg(cfg, base_dir=cwd)
    params = pipeline.checked_params(launcher_params(hc.launcher))
    req = pipeline.prepare([spec], params, single_run_submit_dir(spec), bases=[cwd],
                           overrides=[list(hc.overrides.task)], prestarted=prestarted)
    result = pipeline.launch(req, guarded=True)
    if result is None:  # a dry run
        return
    if result.failed:
        o = result.failed[0]
        print(f"error: run {o.state}: {o.error} (run_dir {o.run_dir}, log {o.log_path})", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    if any(o.state == "PREEMPTED" for o in result.outcomes):
        sys.exit(EXIT_PREEMPTED)   # stopped by a signal after checkpointing: launch again to resume


def single_run_submit_dir(spec: Any) -> Path:
    """Where a single run's submission record lives: beside its run_dir, never inside it (a
    fresh run_dir must stay empty until the job starts) and never shared with a sibling run."""
    rd = Path(spec.run_dir)
    return rd.parent / ".submit" / rd.name


def _hydra_entry(args: Any, parser: Any, prestarted: Optional[Any]) -> None:
    """Hydra's ``main`` with the command line this process parsed once (:func:`parse_argv`)."""
    from hydra import version
    from hydra._internal.utils import _run_hydra

    from launcher.resolvers import conf_dir

    def task(cfg: Any) -> None:  # the early-started handle reaches the job through this closure
        _run_single(cfg, prestarted)

    version.setbase("1.3")
    if args.experimental_rerun is not None:  # as hydra.main: the pickled config of an earlier run
        from hydra.core.utils import _flush_loggers
        from hydra.main import _get_rerun_conf

        task(_get_rerun_conf(args.experimental_rerun, args.overrides))
        _flush_loggers()
        return
    _run_hydra(args=args, args_parser=parser, task_function=task, config_path=str(conf_dir()),
               config_name="config")


def print_app_help(overrides: List[str]) -> None:
    """``launch --help``: Hydra's app help text, rendered without Hydra listing every plugin group.

    Hydra builds its help by querying each of ~80 config groups (its own plugins' included),
    which costs more than the rest of start-up; the app's groups are just the folders of conf/.
    """
    import string

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from launcher.core.plugins import backend_names
    from launcher.resolvers import conf_dir

    root = conf_dir()
    with initialize_config_dir(config_dir=str(root), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    template = str(cfg.hydra.help.template)  # resolved while the hydra node is still there
    groups = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name != "hydra" and any(d.glob("*.yaml")))
    options = {g: sorted(p.stem for p in (root / g).glob("*.yaml")) for g in groups}
    options["backend"] = list(backend_names())  # registered backends, wherever their conf file lives
    app_groups = "".join(f"{g}: {', '.join(opts)}\n" for g, opts in sorted(options.items()))
    launchers = sorted(p.stem for p in (root / "hydra" / "launcher").glob("*.yaml"))
    with open_dict(cfg):
        del cfg["hydra"]
    text = string.Template(template).safe_substitute(
        FLAGS_HELP="(Hydra's flags: launch --hydra-help)",
        HYDRA_CONFIG_GROUPS=f"hydra/launcher: {', '.join(launchers)}\n",
        APP_CONFIG_GROUPS=app_groups,
        CONFIG=OmegaConf.to_yaml(cfg, resolve=False),
    )
    print(text)


def main() -> None:
    """Console script ``launch``."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us; we print them as one-liners
    from launcher.backends import prestart

    # first: a backend's slow start-up (FairChem's ~5 s of imports) overlaps all our set-up
    early = prestart(sys.argv[1:])
    try:
        _main(early)
    finally:
        if early is not None:
            early.close()


# Hydra settings that would write where a rejected or dry run must leave nothing: refused before Hydra runs
_REFUSED_HYDRA = {
    "hydra.run.dir": "set run_dir instead (the run's output directory; Hydra's own folder is private)",
}


def refused_hydra_override(overrides: List[str]) -> Optional[str]:
    """The one-line problem of a Hydra override ``launch`` does not take, else None."""
    for a in overrides:
        key = a.lstrip("+~").partition("=")[0]
        if key in _REFUSED_HYDRA:
            return f"{key}: {_REFUSED_HYDRA[key]}"
        # what Hydra would build from the command line runs before any check (a dry run included)
        if key.replace("/", ".").split(".")[:2] == ["hydra", "callbacks"]:
            return f"{key}: launch does not run Hydra callbacks"
        parts = key.split(".")
        logging_class = parts[:2] in (["hydra", "job_logging"], ["hydra", "hydra_logging"]) and parts[-1] == "class"
        if "_target_" in parts or "()" in parts or logging_class:
            return f"{key}: the command line may not name Python objects to build"
    return None


def parse_argv(argv: List[str]) -> Tuple[Any, Any]:
    """(Hydra's parser, the parsed command line): ``launch``'s one parse of its arguments, handed to Hydra as is.

    A bad flag is one ``error:`` line and exit 2 (argparse would print the whole usage first).
    """
    from hydra._internal.utils import get_args_parser

    from launcher.reporting import one_line

    parser = get_args_parser()

    def error(message: str) -> None:
        report_config_error([f"launch: {one_line(message)} (see launch --help)"])

    parser.error = error  # type: ignore[method-assign]
    return parser, parser.parse_args(argv)


def _main(early: Optional[Any]) -> None:
    from launcher.hydra_source import install as install_config_source
    from launcher.resolvers import register, register_configs, remove_hydra_scratch

    try:
        parser, args = parse_argv(sys.argv[1:])
        refused = refused_hydra_override(args.overrides)
        if refused:
            report_config_error([refused])
        register()
        register_configs()
        install_config_source()
        if args.help and not args.hydra_help:
            print_app_help(list(args.overrides))
            return
        _hydra_entry(args, parser, early)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure ends as one line (exit_for classifies it)
        from launcher.sweep import SweepFailed

        if isinstance(exc, SweepFailed):  # its message lists each failed point, one line each
            if debug():
                raise
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(EXIT_FAILED)
        exit_for(exc)
    finally:
        remove_hydra_scratch()


if __name__ == "__main__":  # pragma: no cover
    main()
