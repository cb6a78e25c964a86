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
    return "\n".join(lines + _backend_table()) + "\n"


def _backend_table() -> list:
    """Every key x registered backend: how it is honoured, or why it is refused (from each backend's
    ``key_docs``); keys no backend documents are the launcher's own and mean the same everywhere."""
    from launcher.backends import get_backend
    from launcher.core.plugins import backend_targets

    columns: dict = {}
    for name, target in backend_targets().items():
        columns.setdefault(target, []).append(name)
    docs = [(", ".join(names), get_backend(names[0]).key_docs) for names in columns.values()]
    lines = ["", "## How each backend honours the keys", "",
             "A key a backend cannot honour is refused by its preflight check, one line naming the key, before "
             "anything runs. For FairChem backends a key left at its schema default leaves FairChem's config as it "
             "is; a key set to another value overrides it as below. Keys not listed are the launcher's own and "
             "mean the same for every backend.", "",
             "| key | " + " | ".join(f"`{n}`" for n, _ in docs) + " |",
             "| --- |" + " --- |" * len(docs)]
    keys = [k for k, _f, _t in iter_fields(RunSpec) if any(k in d for _, d in docs)]
    for key in keys:
        cells = [d.get(key, "as the launcher").replace("|", "\\|") for _, d in docs]
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    print(render(), end="")
