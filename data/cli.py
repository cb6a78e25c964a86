"""``launch-data``: convert, inspect and generate datasets.

Input and output problems (bad files, unwritable OUT, ...) print ``error: <one line>`` and exit
2, like the ``launch`` CLI; ``MLIP_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from launcher.core.errors import EXIT_CONFIG, ConfigError


TRUST_HELP = ("unpickle LMDB records without the allow-list of data classes (only for files you "
              "trust: a pickle can run code)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch-data",
                                description="Convert, inspect and generate mlip-launch datasets.")
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("convert", help="extxyz / ASE database -> FairChem LMDB shards")
    c.add_argument("input", help="extxyz file, ASE database (.db/.json), .aselmdb or .lmdb")
    c.add_argument("out", help="output folder of shards, or a .lmdb file when --shards 1")
    c.add_argument("--shards", type=int, default=1, help="number of *.lmdb shards (default 1)")
    c.add_argument("--energy-key", help="energy key (default: try common names; 'none' to drop)")
    c.add_argument("--forces-key", help="forces key (default: try common names; 'none' to drop)")
    c.add_argument("--stress-key", help="stress key (default: try common names; 'none' to drop)")
    c.add_argument("--format", dest="fmt", choices=("extxyz", "asedb", "lmdb", "aselmdb"),
                   help="input format (default: from the suffix)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.add_argument("--trust-pickles", action="store_true", help=TRUST_HELP)

    i = sub.add_parser("info", help="count, elements, sizes, labels and shards of a dataset")
    i.add_argument("path")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")
    i.add_argument("--quiet", action="store_true", help="no progress bar")
    i.add_argument("--trust-pickles", action="store_true", help=TRUST_HELP)

    d = sub.add_parser("demo", help="write the small EMT demo dataset (train/val/test.lmdb)")
    d.add_argument("out")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--n-train", type=int, default=64)
    d.add_argument("--n-val", type=int, default=16)
    d.add_argument("--n-test", type=int, default=16)
    d.add_argument("--overwrite", action="store_true")
    return p


def _run(args: argparse.Namespace) -> int:
    if args.cmd == "convert":
        from data.convert import convert

        paths = convert(args.input, args.out, shards=args.shards, energy_key=args.energy_key,
                        forces_key=args.forces_key, stress_key=args.stress_key, fmt=args.fmt,
                        overwrite=args.overwrite, progress=not args.quiet,
                        trust_pickles=args.trust_pickles)
        from data.datasets import count

        print(f"wrote {count(args.out)} structures in {len(paths)} shard(s) to {args.out}")
        return 0
    if args.cmd == "info":
        from data.info import format_summary, summarize

        summary = summarize(args.path, progress=not args.quiet, trust_pickles=args.trust_pickles)
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
        return 0
    if args.cmd == "demo":
        from data.demo import make_demo_dataset

        for name in ("n_train", "n_val", "n_test"):
            if getattr(args, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')}: expected a non-negative integer")
        paths = make_demo_dataset(args.out, seed=args.seed, n_train=args.n_train,
                                  n_val=args.n_val, n_test=args.n_test, progress=True,
                                  overwrite=args.overwrite)
        for split, path in paths.items():
            print(f"{split}: {path}")
        return 0
    raise AssertionError(args.cmd)


def _os_error(exc: OSError) -> str:
    """``PATH: reason`` for a file-system error (both paths for a failed rename)."""
    reason = exc.strerror or str(exc)
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (ConfigError, OSError) as exc:  # OSError: unwritable OUT, disk full, ...
        error: BaseException = exc
    if os.environ.get("MLIP_DEBUG") == "1":
        import traceback

        traceback.print_exception(error)
    message = _os_error(error) if isinstance(error, OSError) else str(error)
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
