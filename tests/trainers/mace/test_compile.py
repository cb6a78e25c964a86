"""train.compile: mace's compile preparation keeps the weights and the maths; a compiled run trains as the eager
one does and stores a complete e3nn state dict."""
from __future__ import annotations

import json

import pytest

from .conftest import make_spec

ONE_LAYER = {"model": "MACE", "num_channels": 8, "max_L": 0, "max_ell": 2, "correlation": 2, "num_interactions": 1,
             "r_max": 4.0, "num_radial_basis": 6, "radial_MLP": [16, 16], "MLP_irreps": "8x0e", "E0s": "average"}


def _metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()
            if json.loads(x).get("split") == "val"]


@pytest.mark.slow
def test_compiled_training_matches_eager_and_stores_a_complete_state(tiny_data, tmp_path):
    import torch

    from launcher.job import run_job
    from trainers.mace.model_config import build_model

    mj = tmp_path / "model.json"
    mj.write_text(json.dumps(ONE_LAYER))
    for compile_ in (False, True):
        spec = make_spec(tmp_path / str(compile_), tiny_data, train={"input_json": str(mj), "dtype": "float64",
                                                                   "compile": compile_, "epochs": 2})
        run_job(spec, echo=lambda *_: None)
    eager, compiled = _metrics(tmp_path / "False"), _metrics(tmp_path / "True")
    assert len(eager) == len(compiled) == 2
    for a, b in zip(eager, compiled):
        for k in ("loss", "energy_rmse_per_atom", "force_rmse"):
            assert b[k] == pytest.approx(a[k], rel=1e-6), k
    art = tmp_path / "True" / "artifacts"
    torch.set_default_dtype(torch.float64)
    try:   # strict: the flags mace's preparation drops are back in the stored state
        build_model(json.loads((art / "model.json").read_text())).load_state_dict(
            torch.load(art / "best_model.pt", weights_only=True))
    finally:
        torch.set_default_dtype(torch.float32)
