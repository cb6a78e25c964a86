"""Small helpers every data module shares: one-line error text and optional progress bars."""
from __future__ import annotations

from typing import Any, Iterable


def one_line(exc: BaseException) -> str:
    """``Type: message`` with all whitespace collapsed, for one-line ConfigErrors."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def progress_bar(items: Iterable[Any], enabled: bool, **tqdm_kwargs: Any) -> Iterable[Any]:
    """``items`` wrapped in a tqdm bar when ``enabled`` (tqdm is imported only then)."""
    if not enabled:
        return items
    from tqdm import tqdm

    tqdm_kwargs.setdefault("mininterval", 0.5)
    return tqdm(items, **tqdm_kwargs)
