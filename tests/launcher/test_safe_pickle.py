"""launcher.core.safe_pickle: the globals of pickles and torch files, listed without unpickling them."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import pytest

from launcher.core.safe_pickle import NotAPickle, file_globals, model_file_problem, refused_globals, torch_default


class _Touch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_every_protocol_names_the_callable(tmp_path, protocol):
    marker = tmp_path / "MARKER"
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps({"a": [_Touch(marker), _Touch(marker)]}, protocol=protocol))
    names = file_globals(path)
    assert set(names) == {f"{os.system.__module__}.system"}, names
    assert refused_globals(path, []) == [f"{os.system.__module__}.system"]
    assert not marker.exists()


def test_stack_global_names_read_from_the_memo(tmp_path):
    from collections import OrderedDict

    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps([OrderedDict(), OrderedDict(), os.system], protocol=4))
    assert file_globals(path) == ["collections.OrderedDict", f"{os.system.__module__}.system"]


def test_an_unresolvable_stack_global_is_refused(tmp_path):
    # STACK_GLOBAL taking its names from something other than two strings: never on an allow-list
    path = tmp_path / "p.pkl"
    path.write_bytes(b"\x80\x04N\x8c\x06system\x93.")
    assert refused_globals(path, ["posix.system"]) == ["<unresolved STACK_GLOBAL>"]


def test_torch_files_zip_and_legacy(tmp_path):
    import torch

    marker = tmp_path / "MARKER"
    for legacy in (False, True):
        path = tmp_path / f"f{legacy}.pt"
        torch.save({"w": torch.zeros(3), "x": _Touch(marker)}, path, _use_new_zipfile_serialization=not legacy)
        assert refused_globals(path, []) == [f"{os.system.__module__}.system"], legacy
        clean = tmp_path / f"c{legacy}.pt"
        torch.save({"w": torch.zeros(3, dtype=torch.float64), "n": torch.nn.Linear(2, 2).state_dict()}, clean,
                   _use_new_zipfile_serialization=not legacy)
        assert refused_globals(clean, []) == [], file_globals(clean)
        assert all(torch_default(n) for n in file_globals(clean))
    assert not marker.exists()


def test_torchscript_archives_are_named_as_such(tmp_path):
    path = tmp_path / "ts.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ts/data.pkl", pickle.dumps({}, protocol=2))
        zf.writestr("ts/code/__torch__.py", "def forward(self): pass\n")
    assert refused_globals(path, []) == ["<TorchScript archive>"]


def test_the_problem_is_one_line_naming_key_file_and_class(tmp_path):
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps([os.system, eval, exec], protocol=2))
    problem = model_file_problem("model.weights", path, [])
    assert problem.startswith(f"model.weights: {path} refers to {os.system.__module__}.system (and 2 more: ")
    assert "\n" not in problem and problem.endswith("set data.trust_pickles=true")
    assert model_file_problem("model.weights", path, [f"{os.system.__module__}.system", "builtins.eval",
                                                      "builtins.exec"]) is None


def test_not_a_pickle(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(NotAPickle):
        file_globals(path)
    assert "is not a readable PyTorch file" in model_file_problem("model_in", path, [])
