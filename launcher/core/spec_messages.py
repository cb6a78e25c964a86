"""One-line messages for what OmegaConf refuses while the run schema is built (no project imports: the schema
module imports this one)."""
from __future__ import annotations

from typing import List, Optional


def _did_you_mean(key: str, options: List[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, options, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def interpolation_message(e: Exception, source: str) -> Optional[str]:
    """One line for an OmegaConf interpolation that fails to parse or resolve, naming the key; else None."""
    from omegaconf.errors import GrammarParseError, InterpolationResolutionError

    if not isinstance(e, (GrammarParseError, InterpolationResolutionError)):
        return None
    key = getattr(e, "full_key", None) or "?"
    reason = _first_line(str(e)).replace('"', "'")
    if "Environment variable" in reason:  # 'KeyError raised while resolving interpolation: "Environment ..."'
        reason = reason.split(": ", 1)[-1].strip("'")
    kind = "bad interpolation syntax" if isinstance(e, GrammarParseError) else "interpolation failed"
    return f"{source}: {key}: {kind}: {reason}"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _type_error_message(e: Exception, source: str) -> str:
    key = getattr(e, "full_key", None) or "?"
    msg = _first_line(str(e))
    return f"{source}: bad value for '{key}': {msg}"
