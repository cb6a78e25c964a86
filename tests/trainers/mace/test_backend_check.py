"""The core trainer refuses the keys it has no use for, one line each, instead of ignoring them: the keys other
backends declare as their own (``own_keys``) are refused by preflight's backend checks without MACE naming them."""
from __future__ import annotations

import pytest

from launcher.core.schema import spec_from_dict
from trainers.mace.backend import MaceBackend


@pytest.mark.parametrize("extra, key", [
    ({"train": {"identifier": "x"}}, "train.identifier"),
    ({"backend_python": "/usr/bin/python3"}, "backend_python"),
    ({"backend_env": {"A": "1"}}, "backend_env"),
    ({"backend_args": ["--optim.lr_initial=1"]}, "backend_args"),
    ({"train": {"config_yml": "/c.yml"}}, "train.config_yml"),
])
def test_keys_without_meaning_for_mace_are_refused(tmp_path, extra, key):
    model_json = tmp_path / "m.json"
    model_json.write_text('{"num_channels": 8, "max_L": 0}')
    raw = {"backend": "mace", "task": "train", "run_dir": str(tmp_path / "r"), "train": {"input_json": str(model_json)}}
    for k, v in extra.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) and k == "train" else v
    from launcher.backends import backend_problems

    spec = spec_from_dict(raw)
    problems = backend_problems(spec)
    assert len(problems) == 1 and problems[0].startswith(f"{key}: ") and "backend=mace" in problems[0]
    assert "only for backend=equiformer_v2 / gemnet_oc" in problems[0]
    assert MaceBackend().check(spec) == []       # MACE's own check knows nothing of FairChem's keys


def test_every_refusal_and_key_is_documented():
    from launcher.core.schema import leaf_keys
    from trainers.mace.backend import KEY_DOCS, REFUSED

    assert set(REFUSED) <= set(KEY_DOCS) and set(KEY_DOCS) <= set(leaf_keys())
    assert {k for k in leaf_keys() if k.startswith(("train.", "eval."))} <= set(KEY_DOCS)
