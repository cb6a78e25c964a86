"""device: cuda:N picks that GPU in the core trainer; cuda without a GPU is one clear error."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from launcher.core.errors import ConfigError


def _spec(device: str):
    return SimpleNamespace(device=device)


def test_select_device_with_gpus(monkeypatch):
    import torch

    from trainers.mace.loop import select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert select_device(_spec("cuda:1")) == torch.device("cuda", 1)
    assert select_device(_spec("cuda:0")) == torch.device("cuda", 0)
    assert select_device(_spec("cuda")) == torch.device("cuda")
    assert select_device(_spec("auto")) == torch.device("cuda")
    assert select_device(_spec("cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^device: 'cuda:2' requested but only 2 GPU\(s\) are visible"):
        select_device(_spec("cuda:2"))


def test_select_device_without_gpus(monkeypatch):
    import torch

    from trainers.mace.loop import select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device(_spec("auto")) == torch.device("cpu")
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match=f"^device: '{device}' requested but no GPU is visible"):
            select_device(_spec(device))
