"""EngineConfig refuses what makes no sense when configured, and a device this machine lacks when used."""
from __future__ import annotations

import pytest
import torch

from engine.config import EngineConfig


@pytest.mark.parametrize("device", ["gpu", "mps", "cuda:x", ""])
def test_a_device_the_engine_does_not_run_on_is_refused_when_configured(device: str) -> None:
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
        EngineConfig(device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_gpu_where_torch_sees_none_is_refused_when_used_not_when_configured(device: str) -> None:
    config = EngineConfig(device=device)  # a Ray driver on a CPU configures its GPU workers so
    with pytest.raises(ValueError, match=f"device {device}: no GPU is visible to this torch"):
        config.torch_device()


def test_auto_and_cpu_devices() -> None:
    assert EngineConfig(device="cpu:0").torch_device() == torch.device("cpu:0")
    assert EngineConfig().torch_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
