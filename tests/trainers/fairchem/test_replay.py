"""data.replay on the FairChem backends: a random selection of replay records mixed into the derived training set
(a folder of shards that FairChem's own reader reads as one dataset); what FairChem cannot honour refused one line
per key."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from launcher.core.schema import spec_from_dict
from launcher.core.specio import deep_merge


@pytest.fixture(scope="module")
def emt(tmp_path_factory):
    from data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("fc-replay") / "d", seed=2, n_train=10, n_val=2, n_test=12)


def _spec(emt, **replay):
    base = {"backend": "equiformer_v2", "task": "finetune", "run_dir": "/tmp/r", "model_in": "/tmp/m.pt",
            "data": {"train": str(emt["train"]), "replay": {"paths": [str(emt["test"])]}}}
    return spec_from_dict(deep_merge(base, {"data": {"replay": replay}}))


def test_what_fairchem_cannot_honour_is_refused_key_by_key(emt):
    from trainers.fairchem.derive import refused_keys

    assert not [p for p in refused_keys(_spec(emt, max_samples=3, ratio=0.3)) if p.startswith("data.replay")]
    assert not [p for p in refused_keys(_spec(emt, val_samples=0)) if p.startswith("data.replay")]
    lines = [p for p in refused_keys(_spec(emt, select="fps", weight=2.0, head="pbe", val_samples=8))
             if p.startswith("data.replay")]
    assert sorted(p.split(":", 1)[0] for p in lines) == ["data.replay.head", "data.replay.select",
                                                          "data.replay.val_samples", "data.replay.weight"]
    assert any("set data.replay.val_samples=0" in p for p in lines)   # the default (null) is 0 here


def test_replay_records_are_mixed_into_the_training_set(emt, tmp_path):
    from data.lmdb_dataset import LmdbDataset
    from data.replay import draw
    from trainers.fairchem.replay import with_replay

    notes = []
    spec = _spec(emt, ratio=0.5, max_samples=100)
    folder = Path(with_replay(spec, str(emt["train"]), tmp_path / "mixed", notes.append))
    shards = sorted(p.name for p in folder.glob("*.lmdb"))
    assert shards == ["0000-train.lmdb", "0001-replay.lmdb"] and (folder / shards[0]).is_symlink()
    mixed, train, pre = LmdbDataset(folder), LmdbDataset(emt["train"]), LmdbDataset(emt["test"])
    assert len(mixed) == 10 + 5                                  # round(0.5 x 10) replay records
    chosen = np.sort(draw(12, 0, spec.data.replay.pool, spec.effective_seed)[1][:5])
    assert [mixed.get_bytes(10 + j) for j in range(5)] == [pre.get_bytes(int(i)) for i in chosen]
    assert mixed.get_bytes(3) == train.get_bytes(3)
    assert "5 replay records mixed with 10 training records" in notes[0]
    capped = Path(with_replay(_spec(emt, ratio=0.5, max_samples=2), str(emt["train"]), tmp_path / "capped",
                              notes.append))
    assert len(LmdbDataset(capped)) == 12
    off = spec_from_dict(deep_merge(spec.to_dict(), {"data": {"replay": {"paths": []}}}))
    assert with_replay(off, str(emt["train"]), tmp_path / "off", notes.append) == str(emt["train"])
    assert not (tmp_path / "off").exists()


@pytest.mark.slow
def test_fairchem_reads_the_mixed_set_as_one_dataset(emt, tmp_path, fairchem_python):
    from trainers.fairchem.replay import with_replay

    folder = with_replay(_spec(emt, ratio=0.5), str(emt["train"]), tmp_path / "mixed", lambda _l: None)
    code = ("import sys; from fairchem.core.datasets import LmdbDataset; ds = LmdbDataset({'src': sys.argv[1]}); "
            "print(len(ds), int(ds[14].natoms))")
    proc = subprocess.run([fairchem_python, "-c", code, folder], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    n, natoms = proc.stdout.split()[-2:]
    assert int(n) == 15 and int(natoms) > 0


@pytest.mark.slow
@pytest.mark.fairchem
def test_a_fairchem_finetune_trains_on_the_mixed_set(fairchem_python, fairchem_fixtures, demo_data, emt, tmp_path,
                                                       capsys):
    """A real EquiformerV2 fine-tune: FairChem's derived config reads the mixed folder, and the run finishes."""
    import yaml

    from launcher.core.layout import RunLayout
    from launcher.core.schema import IndexSampling

    from .test_end_to_end import _derived, make_spec, run

    base, _ = run(make_spec(tmp_path / "base", "equiformer_v2", demo_data, epochs=1))
    spec = make_spec(tmp_path / "ft", "equiformer_v2", demo_data, task="finetune", config=False, epochs=1,
                     **{"model.manifest": str(RunLayout.of(tmp_path / "base").manifest), "train.batch_size": 4,
                        "data.train_indices": IndexSampling(max_samples=8, shuffle=True, seed=1),
                        "data.val_indices": IndexSampling(max_samples=4)})
    spec.data.replay.paths, spec.data.replay.val_samples, spec.data.replay.ratio = [str(emt["test"])], 0, 0.5
    capsys.readouterr()
    res, _ = run(spec)
    assert base.status == "finished" and res.status == "finished", res.message
    assert "4 replay records mixed with 8 training records" in capsys.readouterr().out
    src = Path(yaml.safe_load(_derived(tmp_path / "ft", "finetune"))["dataset"]["train"]["src"])
    assert src.is_dir() and sorted(p.name for p in src.glob("*.lmdb")) == ["0000-train.lmdb", "0001-replay.lmdb"]
