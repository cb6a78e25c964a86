"""One-line error reports, shared by every door.

Input and path problems exit 2, run-time failures (divergence, a backend crash) exit 1; either way
the user sees one ``error: ...`` line, and a traceback only with ``MLIP_DEBUG=1``. Hydra's and
OmegaConf's own exceptions are turned into the same lines the schema produces, so both doors refuse
bad input the same way.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, List, NoReturn, Optional

from launcher.core.errors import (EXIT_CONFIG, EXIT_FAILED, BackendFailed, ConfigError, ConfigErrors,
                                  TrainingDiverged)

EXIT_INTERRUPTED = 130


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors as one ``error:`` line and exit 2, like every other input problem."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        print(f"error: {self.prog}: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


def debug() -> bool:
    """``MLIP_DEBUG=1``: tracebacks reach the user (for bug reports); otherwise one line each."""
    return os.environ.get("MLIP_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def one_line(text: object) -> str:
    """Any message folded onto one line (an exception's text may span several)."""
    return " ".join(str(text).split())


def _print_traceback(exc: BaseException) -> None:
    import traceback

    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


def path_error_message(exc: BaseException) -> Optional[str]:
    """An OSError about a named file (permission, not a directory, disk full ...) -> one line naming it."""
    if isinstance(exc, OSError) and getattr(exc, "filename", None):
        what = exc.strerror or one_line(exc)
        return f"{exc.filename}: {what}"
    return None


def failure_line(exc: BaseException, *, run_dir: Optional[str] = None, log: Optional[str] = None) -> str:
    """The one honest line for a run that failed while running: what failed, and where to look."""
    if isinstance(exc, TrainingDiverged):
        what = f"training diverged: {one_line(exc)}"
    elif isinstance(exc, BackendFailed):
        what = f"backend failed: {one_line(exc)}"
    else:
        what = f"run failed: {type(exc).__name__}: {one_line(exc) or '(no message)'}"
    where = [f"run_dir {run_dir}"] if run_dir else []
    if log:
        where.append(f"log {log}")
    return what + (f" ({', '.join(where)})" if where else "")


def best_line(run_dir: str) -> Optional[str]:
    """The closing line of a training run: its best validation metrics with units, 4 significant digits
    (``launcher.core.metrics.metrics_line``), from its manifest or metrics.jsonl; None when it logged none."""
    from pathlib import Path

    from launcher.core.metrics import metrics_line
    from launcher.summary import best_metrics

    try:
        metrics, epoch = best_metrics(Path(run_dir))
    except OSError:
        return None
    if not metrics:
        return None
    at = f" (epoch {epoch})" if epoch is not None else ""
    return f"{run_dir}: best val{at}: {metrics_line(metrics)}"


def exit_for(exc: BaseException, *, run_dir: Optional[str] = None, log: Optional[str] = None) -> NoReturn:
    """Any exception that reached a door -> its one line and exit code (2 input, 1 run-time, 130 ^C)."""
    if isinstance(exc, SystemExit):
        raise exc
    if debug():
        _print_traceback(exc)
    if isinstance(exc, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    lines = config_error_message(exc)
    if lines is None:
        path = path_error_message(exc)
        lines = [path] if path else None
    if lines is not None:
        report_config_error(lines)
    print(f"error: {failure_line(exc, run_dir=run_dir, log=log)}", file=sys.stderr)
    sys.exit(EXIT_FAILED)


def _missing_option_message(text: str) -> str:
    """Hydra's multi-line 'Could not find group/option' text -> one line with the options."""
    import re

    m = re.search(r"Could not find '([^']+)/([^']+)'", text)
    opts = re.findall(r"^\t(\S+)$", text, flags=re.M)
    if m:
        group, option = m.groups()
        return f"{group}: no option '{option}'; available: {', '.join(opts) or '(none)'}"
    return text.strip().splitlines()[0]


def config_error_message(exc: BaseException) -> Optional[List[str]]:
    """The one-line message(s) for an exception that is a configuration problem, else None."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

    from launcher.core.schema import _key_error_message
    from launcher.core.spec_messages import _type_error_message

    if isinstance(exc, ConfigErrors):
        return list(exc.problems)
    if isinstance(exc, ConfigError):
        return [str(exc)]
    try:
        from hydra.errors import (ConfigCompositionException, HydraException, MissingConfigException,
                                  OverrideParseException, SearchPathException)
    except ImportError:  # pragma: no cover
        return None
    cause = exc.__cause__ or exc.__context__
    for e in (exc, cause):
        line = _interpolation_line(e)
        if line:
            return [line]
        if isinstance(e, OverrideParseException):
            return [_override_parse_line(e)]
    if isinstance(exc, MissingConfigException):
        return [_missing_option_message(str(exc))]
    if isinstance(exc, SearchPathException):  # --config-dir naming no folder
        return [f"--config-dir: {one_line(exc)}"]
    if isinstance(exc, (ConfigCompositionException, OverrideParseException)) or (
            isinstance(exc, HydraException) and isinstance(cause, OmegaConfBaseException)):
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
            return [_key_error_message(cause, _key_source(cause))]
        if isinstance(cause, ValidationError):
            return [_type_error_message(cause, "command line")]
        if isinstance(cause, MissingConfigException):
            return [_missing_option_message(str(cause))]
        return [" ".join(str(exc).split())]
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        return [_key_error_message(exc, _key_source(exc))]
    if isinstance(exc, ValidationError):
        return [_type_error_message(exc, "command line")]
    return None


def _key_source(exc: BaseException) -> str:
    """``command line``, or the user's config file (and line) that holds the unknown key."""
    from launcher.hydra_source import where_key

    full_key = str(getattr(exc, "full_key", None) or "")
    leaf = str(getattr(exc, "key", None) or full_key.rsplit(".", 1)[-1])
    return where_key(full_key, leaf) if leaf else "command line"


def _override_parse_line(exc: Any) -> str:
    """Hydra's grammar error for one override -> one line naming it and saying how to quote it."""
    import re

    from launcher.translate import quoted_override

    override = str(getattr(exc, "override", "") or "")
    why = one_line(getattr(exc, "message", "") or exc).split(" See https://")[0]
    key = override.partition("=")[0]
    if "=" not in override or not re.fullmatch(r"[+~]{0,2}[A-Za-z0-9_./@-]+", key):
        return (f"command line: cannot parse override '{override}' ({why}); an override is KEY=VALUE, "
                f"KEY a plain dotted name (A-Z a-z 0-9 _ . / -)")
    return (f"command line: cannot parse override '{override}' ({why}): a value with characters outside "
            f"A-Z a-z 0-9 _ . / - (non-ASCII letters, '=', spaces, quotes...) must be quoted for Hydra inside "
            f"the shell's quotes, e.g. {quoted_override(override)}")


def _interpolation_line(exc: Optional[BaseException]) -> Optional[str]:
    """A failed interpolation in a composed config -> one line naming the key and the file that set it."""
    from launcher.core.spec_messages import interpolation_message

    if exc is None:
        return None
    node = getattr(exc, "child_node", None)
    raw = node._value() if node is not None and hasattr(node, "_value") else None
    source = "config"
    if isinstance(raw, str):
        from launcher.hydra_source import where_set

        source = where_set(raw)
    return interpolation_message(exc, source)


def report_config_error(lines: List[str]) -> NoReturn:
    lines = [one_line(line) for line in lines]
    if len(lines) == 1:
        print(f"error: {lines[0]}", file=sys.stderr)
    else:
        print(f"error: {len(lines)} problems:", file=sys.stderr)
        for line in lines:
            print(f"  {line}", file=sys.stderr)
    sys.exit(EXIT_CONFIG)


# ------------------------------------------------------------------------------------------------
# Submitting from a door: failures become one line; a start refused on input leaves no trace
# ------------------------------------------------------------------------------------------------

def guarded_submit(specs: list, submit: Callable[[], Any]) -> Any:
    """Call ``submit`` (which runs or submits ``specs``) so that whatever escapes it ends as one line.

    A problem with the input found only when the job started (a ``ConfigError``) exits 2; the job
    itself, holding the run_dir's lock, has left a run_dir it found fresh as it was
    (:func:`launcher.job.run_job`): cleaning up here, without the lock, could delete the files of
    another job that launched into the same run_dir meanwhile. Any other failure of a single
    in-process run exits 1 naming its run_dir and log.
    """
    try:
        return submit()
    except (SystemExit, KeyboardInterrupt, ConfigError):
        raise
    except BaseException as exc:  # noqa: BLE001 - reported as one line (traceback with MLIP_DEBUG=1)
        if len(specs) == 1 and specs[0].run_dir:
            from launcher.core.layout import RunLayout

            exit_for(exc, run_dir=specs[0].run_dir, log=str(RunLayout.of(specs[0].run_dir).train_log))
        exit_for(exc)
