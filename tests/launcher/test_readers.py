"""launcher.core.readers: the one reader of YAML/JSON input files (in-process, fast)."""
from __future__ import annotations

import json
import time

import pytest
import yaml

from launcher.core.errors import ConfigError
from launcher.core.readers import MAX_DEPTH, key_line, load_json, load_yaml, parse_json, parse_yaml

ORDINARY = """\
backend: mace
defaults: &d {epochs: 2, lr: 0.01}
train:
  <<: *d
  lr: 0.001
  dtype: float32
runs:
  - {name: a, seed: 1}
  - name: "b: c"
    tags: [x, 'y', null, true, 1.5e-3, 2024-01-02]
"""


def test_ordinary_yaml_reads_as_pyyaml_safe_load_does():
    assert parse_yaml(ORDINARY, where="f") == yaml.safe_load(ORDINARY)


def test_mappings_remember_the_line_of_each_key():
    data = parse_yaml(ORDINARY, where="f")
    assert key_line(data, "train") == 3 and key_line(data["train"], "dtype") == 6


def test_byte_order_mark_is_dropped(tmp_path):
    f = tmp_path / "bom.yaml"
    f.write_bytes(b"\xef\xbb\xbfa: 1\n")
    assert load_yaml(f, key="k") == {"a": 1}


@pytest.mark.parametrize("text, needle", [
    ("a: &a [*a]\n", "recursive alias"),
    ("? [a]\n: 1\n", "not a plain value"),
    ("a: 1\n---\nb: 2\n", "single document"),
    ("a: !!binary aGk=\n", "tag '!!binary'"),
    ("a: 1\nb: 2\na: 3\n", "line 3, column 1: duplicate key 'a' (first at line 1)"),
    ("".join(" " * (2 * i) + f"k{i}:\n" for i in range(MAX_DEPTH + 5)) + " " * (2 * MAX_DEPTH + 10) + "1\n",
     "nested deeper"),
])
def test_refused_yaml(text, needle):
    with pytest.raises(ConfigError) as e:
        parse_yaml(text, where="f.yaml")
    assert needle in str(e.value) and str(e.value).startswith("f.yaml: ") and "\n" not in str(e.value)


def test_alias_bomb_is_refused_before_it_expands():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="aliases expand"):
        parse_yaml("\n".join(lines) + "\n", where="bomb.yaml")
    assert time.monotonic() - t0 < 10  # 10**12 nodes if it expanded


def test_shared_aliases_within_the_bound_are_fine():
    text = "base: &b {x: 1, y: [1, 2]}\n" + "".join(f"k{i}: *b\n" for i in range(100))
    assert parse_yaml(text, where="f")["k99"] == {"x": 1, "y": [1, 2]}


def test_not_utf8_names_the_byte(tmp_path):
    f = tmp_path / "latin1.yaml"
    f.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"line 1, column 10: not UTF-8 text \(byte 0xe9 at offset 9\)"):
        load_yaml(f, key="--config")


def test_json_duplicate_key_names_both_lines():
    with pytest.raises(ConfigError, match=r"f.json: line 3, column 2: duplicate key 'x' \(first at line 2, column 2\)"):
        parse_json('{\n "x": 1,\n "x": 2\n}', where="f.json")


def test_json_within_bounds_reads_as_json_does(tmp_path):
    obj = {"a": [1, 2.5, None, True, {"b": "c"}], "d": {"e": []}}
    f = tmp_path / "ok.json"
    f.write_text(json.dumps(obj))
    assert load_json(f, key="k") == obj


def test_oversized_json_is_refused_without_reading(tmp_path):
    f = tmp_path / "big.json"
    with open(f, "wb") as fh:
        fh.truncate(10 << 30)  # sparse: reading it would take minutes
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="bytes, more than"):
        load_json(f, key="model.manifest")
    assert time.monotonic() - t0 < 5


def test_many_nodes_written_out_are_not_an_alias_bomb():
    """The alias bound counts what aliases add: a long list without aliases reads in full."""
    text = "a: [" + ",".join(["1"] * 110_000) + "]\n"
    assert len(parse_yaml(text, where="f")["a"]) == 110_000
