"""``logs/train.log`` and ``logs/metrics.jsonl`` of a training run (written by rank 0 only)."""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Dict

from launcher.core.atomic import append_jsonl, atomic_write_text, read_jsonl
from launcher.core.layout import RunLayout


class RunLog:
    """``logs/train.log`` (and the console on rank 0) plus ``logs/metrics.jsonl``."""

    def __init__(self, layout: RunLayout, enabled: bool, echo: bool = True) -> None:
        self.layout, self.enabled, self.echo = layout, enabled, echo
        self.bars = False  # tqdm bars are on: console lines go through tqdm.write so bars stay intact
        self.t0 = time.time()

    def info(self, msg: str) -> None:
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        with open(self.layout.train_log, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        if self.echo:
            if self.bars:
                from tqdm import tqdm

                tqdm.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr, flush=True)

    def metrics(self, record: Dict[str, Any]) -> None:
        if self.enabled:
            record = {"time": round(time.time() - self.t0, 3), **record}
            append_jsonl(self.layout.metrics_jsonl, record)

    def truncate_after(self, step: int) -> None:
        """Drop metric lines a killed attempt wrote after the checkpoint we resume from."""
        if not self.enabled or not self.layout.metrics_jsonl.exists():
            return
        kept = [r for r in read_jsonl(self.layout.metrics_jsonl) if int(r.get("step", 0)) <= step]
        atomic_write_text(self.layout.metrics_jsonl, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
