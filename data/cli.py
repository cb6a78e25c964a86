"""``launch-data``: convert, inspect and generate datasets.

Input and output problems (bad files, unwritable OUT, options that do not apply to the input, ...)
print ``error: <one line>`` and exit 2, like the ``launch`` CLI; other failures exit 1 with one line;
``MLIP_DEBUG=1`` adds the traceback. SIGINT / SIGTERM stop a command cleanly: its temporary output
is removed, an existing OUT is left as it was, and it exits 130 / 143 with one line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import NoReturn, Sequence

from launcher.core.errors import EXIT_CONFIG, EXIT_FAILED, ConfigError


QUIET_HELP = "no progress bars (they are shown only when stderr is a terminal)"
TRUST_HELP = ("unpickle LMDB records without the allow-list of data classes (only for files you "
              "trust: a pickle can run code)")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one ``error:`` line and exit 2, like every other input problem."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        print(f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} --help)",
              file=sys.stderr)
        sys.exit(EXIT_CONFIG)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="launch-data",
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
    c.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    c.add_argument("--trust-pickles", action="store_true", help=TRUST_HELP)

    i = sub.add_parser("info", help="count, elements, sizes, labels and shards of a dataset")
    i.add_argument("path")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")
    i.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    i.add_argument("--trust-pickles", action="store_true", help=TRUST_HELP)

    d = sub.add_parser("demo", help="write the small EMT demo dataset (train/val/test.lmdb)")
    d.add_argument("out")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--n-train", type=int, default=64)
    d.add_argument("--n-val", type=int, default=16)
    d.add_argument("--n-test", type=int, default=16)
    d.add_argument("--domain", choices=("base", "shifted"), default="base",
                   help="base: the embedded default's structures; shifted: the same structures compressed 4-8%% "
                        "(a second domain for fine-tuning)")
    d.add_argument("--overwrite", action="store_true", help="replace existing split files")
    d.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    return p


def _run(args: argparse.Namespace) -> int:
    progress = not args.quiet and sys.stderr.isatty()
    if args.cmd == "convert":
        from data.convert import convert

        paths = convert(args.input, args.out, shards=args.shards, energy_key=args.energy_key,
                        forces_key=args.forces_key, stress_key=args.stress_key, fmt=args.fmt,
                        overwrite=args.overwrite, progress=progress,
                        trust_pickles=args.trust_pickles)
        from data.datasets import count

        print(f"wrote {count(args.out)} structures in {len(paths)} shard(s) to {args.out}")
        return 0
    if args.cmd == "info":
        from data.info import format_summary, summarize

        summary = summarize(args.path, progress=progress, trust_pickles=args.trust_pickles)
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
        return 0
    if args.cmd == "demo":
        from data.demo import make_demo_dataset

        paths = make_demo_dataset(args.out, seed=args.seed, n_train=args.n_train,
                                  n_val=args.n_val, n_test=args.n_test, progress=progress,
                                  overwrite=args.overwrite, domain=args.domain)
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
    from data.interrupt import Interrupted, interruptible

    code, args = EXIT_CONFIG, None
    try:
        with interruptible():
            args = _parser().parse_args(argv)
            return _run(args)
    except Interrupted as exc:
        error: BaseException = exc
        code = exc.exit_code
        out = getattr(args, "out", None)
        message = f"interrupted by {exc.name}" + (f"; {out} left as it was" if out else "")
    except (ConfigError, OSError) as exc:  # OSError: unwritable OUT, disk full, ...
        error = exc
        message = _os_error(exc) if isinstance(exc, OSError) else str(exc)
    except Exception as exc:  # noqa: BLE001 - a failure we did not foresee: still one line
        error, code = exc, EXIT_FAILED
        message = f"launch-data {getattr(args, 'cmd', '')} failed: {type(exc).__name__}: {exc}"
    if os.environ.get("MLIP_DEBUG") == "1":
        import traceback

        traceback.print_exception(error)
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
