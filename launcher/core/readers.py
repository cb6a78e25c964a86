"""Reading the YAML and JSON files users hand us, so that every bad one ends as one line.

Every file the product reads as configuration (run.yaml, model.json, manifests, FairChem configs, Hydra
experiment files, index lists) goes through here. Only regular files are opened (a FIFO or a device
would block or never end), the size is bounded before reading, the text must be UTF-8 (the byte offset
of the first bad byte is named), and the parsed structure is bounded too: nesting depth, and the size
the YAML aliases expand to (a few hundred bytes of nested aliases can stand for billions of nodes).
YAML takes only the standard tags; duplicate keys are refused in YAML and JSON alike, naming both lines.
Each problem is a :class:`ConfigError` of the form ``KEY: PATH: line L, column C: what``.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from launcher.core.errors import ConfigError

MAX_CONFIG_BYTES = 256 << 10     # YAML is parsed in pure Python (~1 s per 100 KiB on a busy core)
MAX_JSON_BYTES = 16 << 20        # model.json, manifests
MAX_DEPTH = 64                   # nesting levels (a run spec needs 3; FairChem configs fewer than 10)
MAX_NODES = 100_000              # YAML nodes that alias expansion may add to those written out

# the tags a configuration may carry: YAML's core schema (implicit timestamps included), nothing that
# builds Python objects, byte strings or sets
_YAML = "tag:yaml.org,2002:"
ALLOWED_TAGS = frozenset(_YAML + t for t in ("str", "int", "float", "bool", "null", "map", "seq", "merge",
                                             "timestamp"))


class MarkedDict(dict):
    """A mapping read from YAML that remembers the line of each key (for messages naming lines)."""

    key_lines: Dict[Any, int]


def _prefix(key: Optional[str], path: Any) -> str:
    return f"{key}: {path}" if key else str(path)


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words (from its ``st_mode``)."""
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO (named pipe)"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def read_bytes(path: Any, *, key: Optional[str], max_bytes: int = MAX_CONFIG_BYTES, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; anything else is a one-line ConfigError.

    The type is checked with ``stat`` before opening, and again on the open descriptor (opened
    non-blocking), so a FIFO or device is refused without ever waiting on it.
    """
    p = os.fspath(path)
    where = _prefix(key, p)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise ConfigError(f"{key + ': ' if key else ''}file not found: {p}", key=key) from None
    except OSError as e:
        raise ConfigError(f"{where}: {e.strerror or e}", key=key) from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{where} is a {file_kind(st.st_mode)}, expected a regular {what}", key=key)
    if st.st_size > max_bytes:
        raise ConfigError(f"{where} is {st.st_size} bytes, more than the {max_bytes} a {what} may have", key=key)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ConfigError(f"{where}: {e.strerror or e}", key=key) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between stat and open
            raise ConfigError(f"{where} is not a regular file, expected a {what}", key=key)
        chunks: List[bytes] = []
        total = 0
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total > max_bytes:
        raise ConfigError(f"{where} is more than the {max_bytes} bytes a {what} may have", key=key)
    return b"".join(chunks)


def decode_utf8(data: bytes, *, where: str) -> str:
    """UTF-8 text (a leading byte-order mark dropped); a bad byte is named by offset, line and column."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(f"{where}: line {line}, column {col}: not UTF-8 text (byte 0x{data[e.start]:02x} at "
                          f"offset {e.start}); save the file as UTF-8") from None
    return text[1:] if text.startswith("\ufeff") else text


def read_text(path: Any, *, key: Optional[str], max_bytes: int = MAX_CONFIG_BYTES, what: str = "file") -> str:
    """:func:`read_bytes` decoded as UTF-8."""
    return decode_utf8(read_bytes(path, key=key, max_bytes=max_bytes, what=what), where=_prefix(key, os.fspath(path)))


# ------------------------------------------------------------------------------------------------
# YAML
# ------------------------------------------------------------------------------------------------

def _position(text: str, index: int) -> Tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


class _Refused(Exception):
    def __init__(self, message: str, mark: Any = None) -> None:
        super().__init__(message)
        self.mark = mark


def _loader_class() -> type:
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        """SafeLoader whose composition is bounded in depth (the composer recurses once per level)."""

        _depth = 0

        def compose_node(self, parent, index):  # type: ignore[override]
            self._depth += 1
            try:
                if self._depth > MAX_DEPTH:
                    raise _Refused(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def construct_mapping(self, node, deep=False):  # type: ignore[override]
            out = MarkedDict(super().construct_mapping(node, deep))
            out.key_lines = {}
            for k, _v in node.value:
                if k.tag != _YAML + "merge" and isinstance(k, yaml.ScalarNode):
                    try:
                        out.key_lines.setdefault(self.construct_object(k), k.start_mark.line + 1)
                    except TypeError:
                        pass
            return out

    BoundedLoader.add_constructor(_YAML + "map", BoundedLoader.construct_mapping)
    return BoundedLoader


def _check_tree(root: Any) -> None:
    """Refuse recursive aliases, tags outside :data:`ALLOWED_TAGS`, duplicate keys, and aliases that add more than
    :data:`MAX_NODES` nodes to the file's own or nest past :data:`MAX_DEPTH` levels. Iterative, each node once."""
    import yaml

    info: Dict[int, Tuple[int, int]] = {}   # id(node) -> (expanded size, expanded depth)
    nodes: List[Any] = []
    active = set()
    stack: List[Tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        children = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if done:
            active.discard(nid)
            depth = 1 + max((info[id(c)][1] for c in children), default=0)
            if depth > MAX_DEPTH:
                raise _Refused(f"its aliases expand to more than {MAX_DEPTH} levels of nesting", node.start_mark)
            info[nid] = (1 + sum(info[id(c)][0] for c in children), depth)
            nodes.append(node)
            continue
        if nid in info:
            continue
        if nid in active:
            raise _Refused("a recursive alias (a node that contains itself)", node.start_mark)
        if node.tag not in ALLOWED_TAGS:
            raise _Refused(f"tag '{node.tag.replace(_YAML, '!!')}' is not allowed (only plain YAML values: "
                           f"strings, numbers, booleans, null, lists, mappings)", node.start_mark)
        if isinstance(node, yaml.MappingNode):
            _check_duplicate_keys(node)
        active.add(nid)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in info)
    limit = len(info) + MAX_NODES
    if info[id(root)][0] > limit:  # name the first node (children come before parents) past the bound
        first = next(n for n in nodes if info[id(n)][0] > limit)
        raise _Refused(f"its aliases expand to more than {MAX_NODES} nodes beyond the file's own", first.start_mark)


def _check_duplicate_keys(node: Any) -> None:
    import yaml

    seen: Dict[Tuple[str, str], int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise _Refused("a key that is not a plain value (a list or mapping used as a key)", key_node.start_mark)
        if key_node.tag == _YAML + "merge":
            continue
        ident = (key_node.tag, key_node.value)
        line = key_node.start_mark.line + 1
        if ident in seen:
            raise _Refused(f"duplicate key '{key_node.value}' (first at line {seen[ident]}); a mapping takes each "
                           f"key once", key_node.start_mark)
        seen[ident] = line


def _mark_text(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def parse_yaml(text: str, *, where: str) -> Any:
    """YAML text -> plain data (mappings are :class:`MarkedDict`), every problem one ConfigError naming
    ``where`` and the line and column."""
    import yaml

    loader = None
    try:
        loader = _loader_class()(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_tree(node)
        return loader.construct_document(node)
    except _Refused as e:
        raise ConfigError(f"{where}: {_mark_text(e.mark)}{e}") from None
    except yaml.reader.ReaderError as e:
        line, col = _position(text, e.position)
        raise ConfigError(f"{where}: line {line}, column {col}: character U+{e.character:04X} is not allowed in "
                          f"YAML") from None
    except yaml.MarkedYAMLError as e:
        what = " ".join(x for x in (e.context, e.problem) if x)
        raise ConfigError(f"{where}: {_mark_text(e.problem_mark or e.context_mark)}not valid YAML: "
                          f"{' '.join(what.split())}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml(path: Any, *, key: Optional[str], max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """A YAML file through :func:`read_text` and :func:`parse_yaml`."""
    text = read_text(path, key=key, max_bytes=max_bytes, what="YAML file")
    return parse_yaml(text, where=_prefix(key, os.fspath(path)))


def key_line(mapping: Any, key: Any) -> Optional[int]:
    """The line ``key`` was read from, when ``mapping`` came from :func:`parse_yaml`."""
    lines = getattr(mapping, "key_lines", None)
    return lines.get(key) if lines else None


# ------------------------------------------------------------------------------------------------
# JSON
# ------------------------------------------------------------------------------------------------

class _DuplicateKey(Exception):
    pass


def _unique_pairs(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _json_depth(obj: Any) -> int:
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, d)
            if d > MAX_DEPTH:
                return d
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def parse_json(text: str, *, where: str) -> Any:
    """JSON text -> data; syntax errors with line and column, duplicate keys and deep nesting refused."""
    try:
        obj = json.loads(text, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: line {e.lineno}, column {e.colno}: not valid JSON: {e.msg}") from None
    except _DuplicateKey as e:
        import re

        key = str(e.args[0])
        spots = [_position(text, m.start()) for m in re.finditer(re.escape(json.dumps(key)) + r"\s*:", text)]
        at = f"line {spots[1][0]}, column {spots[1][1]}: " if len(spots) > 1 else ""
        first = f" (first at line {spots[0][0]}, column {spots[0][1]})" if len(spots) > 1 else ""
        raise ConfigError(f"{where}: {at}duplicate key '{key}'{first}; an object takes each key once") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested deeper than {MAX_DEPTH} levels") from None
    if _json_depth(obj) > MAX_DEPTH:
        raise ConfigError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    return obj


def load_json(path: Any, *, key: Optional[str], max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A JSON file through :func:`read_text` and :func:`parse_json`."""
    p = Path(path)
    text = read_text(p, key=key, max_bytes=max_bytes, what="JSON file")
    return parse_json(text, where=_prefix(key, p))
