"""One-line error reports, shared by every door: configuration problems exit 2, nothing else here.

Hydra's and OmegaConf's own exceptions are turned into the same ``error: ...`` lines the schema
produces, so both doors refuse bad input the same way.
"""
from __future__ import annotations

import sys
from typing import List, NoReturn, Optional

from launcher.core.errors import EXIT_CONFIG, ConfigError, ConfigErrors


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

    from launcher.core.schema import _key_error_message, _type_error_message

    if isinstance(exc, ConfigErrors):
        return list(exc.problems)
    if isinstance(exc, ConfigError):
        return [str(exc)]
    try:
        from hydra.errors import (ConfigCompositionException, HydraException, MissingConfigException,
                                  OverrideParseException)
    except ImportError:  # pragma: no cover
        return None
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, MissingConfigException):
        return [_missing_option_message(str(exc))]
    if isinstance(exc, (ConfigCompositionException, OverrideParseException)) or (
            isinstance(exc, HydraException) and isinstance(cause, OmegaConfBaseException)):
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
            return [_key_error_message(cause, "command line")]
        if isinstance(cause, ValidationError):
            return [_type_error_message(cause, "command line")]
        if isinstance(cause, MissingConfigException):
            return [_missing_option_message(str(cause))]
        return [" ".join(str(exc).split())]
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        return [_key_error_message(exc, "command line")]
    if isinstance(exc, ValidationError):
        return [_type_error_message(exc, "command line")]
    return None


def report_config_error(lines: List[str]) -> NoReturn:
    if len(lines) == 1:
        print(f"error: {lines[0]}", file=sys.stderr)
    else:
        print(f"error: {len(lines)} problems:", file=sys.stderr)
        for line in lines:
            print(f"  {line}", file=sys.stderr)
    sys.exit(EXIT_CONFIG)
