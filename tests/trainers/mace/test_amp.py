"""train.amp / eval.amp of the MACE backend: what preflight refuses, and the float32 side of autocast.

The CUDA autocast itself runs in scripts/gpu_check on a GPU node; here the parts that do not need one.
"""
from __future__ import annotations

import pytest

from .conftest import make_spec


def test_amp_is_refused_with_float64_and_stated_on_cpu(tiny_data, tiny_model_json, tmp_path):
    from trainers.mace.backend import kernel_problems

    cpu = make_spec(tmp_path / "a", tiny_data, train={"input_json": str(tiny_model_json), "amp": True})
    assert kernel_problems(cpu) == []   # runs without autocast; train.log says so (as FairChem's runs)
    cpu64 = make_spec(tmp_path / "e", tiny_data, train={"input_json": str(tiny_model_json), "amp": True,
                                                         "dtype": "float64"})
    assert kernel_problems(cpu64) == []  # no autocast on a CPU, so nothing to refuse
    f64 = make_spec(tmp_path / "b", tiny_data, device="cuda",
                    train={"input_json": str(tiny_model_json), "amp": True, "dtype": "float64"})
    assert kernel_problems(f64) == ["train.amp: needs train.dtype=float32 (autocast leaves float64 as it is), "
                                    "got train.dtype=float64"]
    ok = make_spec(tmp_path / "c", tiny_data, device="auto", train={"input_json": str(tiny_model_json), "amp": True})
    assert kernel_problems(ok) == []
    ev = make_spec(tmp_path / "d", tiny_data, task="evaluate", model_in=str(tmp_path), eval={"amp": True})
    assert kernel_problems(ev) == []
    ev64 = make_spec(tmp_path / "f", tiny_data, task="evaluate", device="cuda", model_in=str(tmp_path),
                     eval={"amp": True}, train={"dtype": "float64"})
    assert [p.split(":")[0] for p in kernel_problems(ev64)] == ["eval.amp"]


def test_the_loss_sees_float32_and_cpu_runs_no_autocast():
    import torch

    from trainers.mace.amp import as_float32, autocast, describe, needs_scaler

    out = {"energy": torch.ones(2, dtype=torch.bfloat16), "forces": torch.ones(3, 3, dtype=torch.float16),
           "stress": None, "virials": torch.ones(1, dtype=torch.float64)}
    wide = as_float32(out)
    assert wide["energy"].dtype == wide["forces"].dtype == torch.float32
    assert wide["stress"] is None and wide["virials"].dtype == torch.float64
    cpu = torch.device("cpu")
    with autocast(cpu, True):
        assert not torch.is_autocast_enabled("cpu")
    assert not needs_scaler(cpu, True)
    assert "resolved to CPU" in describe(cpu, True)


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a GPU")
def test_cuda_autocast_picks_bfloat16_where_supported():
    import torch

    from trainers.mace.amp import amp_dtype, needs_scaler

    gpu = torch.device("cuda")
    want = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert amp_dtype(gpu) == want
    assert needs_scaler(gpu, True) == (want == torch.float16)
