"""Generate docs/schema.md from the schema dataclasses, so the reference cannot drift from code.

    python -m launcher.schema_docs > docs/schema.md      (tests compare the committed file)
"""
from __future__ import annotations

import dataclasses
import typing

from launcher.core.schema import CHOICES, RunSpec, iter_fields


def _type_name(t: typing.Any) -> str:
    origin = typing.get_origin(t)
    if origin is typing.Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return _type_name(args[0]) + " or null"
    if origin in (list, typing.List):
        return f"list[{_type_name(typing.get_args(t)[0])}]"
    if origin in (dict, typing.Dict):
        k, v = typing.get_args(t)
        return f"map[{_type_name(k)}, {_type_name(v)}]"
    return getattr(t, "__name__", str(t))


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return "null" if f.default is None else repr(f.default).replace("'", "")
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return repr(f.default_factory()).replace("'", "")  # type: ignore[misc]
    return "(required)"


def render() -> str:
    lines = [
        "# Run schema reference",
        "",
        "Generated from `launcher/core/schema.py` by `python -m launcher.schema_docs`; do not edit by hand.",
        "Every key is reachable from both doors: `launch KEY=VALUE` (Hydra) and a plain `run.yaml`",
        "(`launch-run --config run.yaml`, nested or dotted keys). Cross-field rules are in",
        "`launcher.core.schema.validate`; the Hydra door's defaults come from the groups in `conf/`",
        "(`device: auto` and the demo data there; the plain door uses the schema defaults below).",
        "",
        "| key | type | default | allowed | description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, f, t in iter_fields(RunSpec):
        allowed = ", ".join(str(c) for c in CHOICES.get(key, ()) if c is not None)
        doc = f.metadata.get("doc", "").replace("|", "\\|")
        lines.append(f"| `{key}` | {_type_name(t)} | `{_default(f)}` | {allowed} | {doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
