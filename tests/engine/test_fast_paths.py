"""What a CUDA device gets (engine/fast_paths.py), decided without one: the on-device checks of
the Triton kernels are stood in for by their verdicts."""
from __future__ import annotations

import pytest
import torch

from engine import fast_paths
from engine.config import EngineConfig

CUDA = torch.device("cuda")


def test_dense_models_get_graphs_and_the_kernels(monkeypatch):
    monkeypatch.setattr(fast_paths, "triton_problem", lambda *args: None)
    monkeypatch.setattr(fast_paths, "norm_rope_problem", lambda *args: None)
    dense = fast_paths.choose(EngineConfig(), CUDA, torch.bfloat16)
    assert (dense.attention, dense.cuda_graphs, dense.triton_norm_rope, dense.overlap) == ("triton", True, True, True)
    off = fast_paths.choose(EngineConfig(cuda_graphs=False), CUDA, torch.bfloat16, routed=True)
    assert not off.cuda_graphs and "switched off" in off.describe() and off.overlap


def test_a_failed_triton_check_leaves_the_reference_and_no_graphs(monkeypatch):
    monkeypatch.setattr(fast_paths, "triton_problem", lambda *args: "differs from the torch reference by 0.5")
    paths = fast_paths.choose(EngineConfig(), CUDA, torch.bfloat16)
    assert (paths.attention, paths.cuda_graphs, paths.triton_norm_rope) == ("torch", False, False)
    assert "Triton attention off" in paths.describe()
    # The reference reads back every step: no step is queued ahead unless asked for.
    assert not paths.overlap and "overlapped steps off" in paths.describe()
    assert fast_paths.choose(EngineConfig(overlap_steps="on"), CUDA, torch.bfloat16).overlap


def test_routed_models_get_graphs_with_the_triton_experts_only(monkeypatch):
    monkeypatch.setattr(fast_paths, "triton_problem", lambda *args: None)
    monkeypatch.setattr(fast_paths, "norm_rope_problem", lambda *args: None)
    assert fast_paths.choose(EngineConfig(), CUDA, torch.bfloat16, routed=True).cuda_graphs
    monkeypatch.setattr(fast_paths, "norm_rope_problem", lambda *args: "mixture of experts differs by 0.5")
    off = fast_paths.choose(EngineConfig(), CUDA, torch.bfloat16, routed=True)
    assert not off.cuda_graphs and not off.triton_norm_rope and "route on the host" in off.describe()
    assert not off.overlap
    assert fast_paths.choose(EngineConfig(), CUDA, torch.bfloat16).cuda_graphs  # dense: graphs whatever the kernels
    fp32 = fast_paths.choose(EngineConfig(), CUDA, torch.float32, routed=True)  # no 16-bit kernels: no experts'
    assert not fp32.cuda_graphs and not fp32.triton_norm_rope


def test_the_sampling_noise_kernel_goes_by_its_own_check_alone(monkeypatch):
    """Whatever the attention backend and dtype; never on the CPU."""
    monkeypatch.setattr(fast_paths, "triton_problem", lambda *args: "differs from the torch reference by 0.5")
    monkeypatch.setattr(fast_paths, "noise_problem", lambda device: None)
    paths = fast_paths.choose(EngineConfig(), CUDA, torch.float32)
    assert paths.attention == "torch" and paths.triton_noise and "Triton sampling noise on" in paths.describe()
    monkeypatch.setattr(fast_paths, "noise_problem", lambda device: "the noise over the vocabulary differs")
    paths = fast_paths.choose(EngineConfig(), CUDA, torch.bfloat16)
    assert not paths.triton_noise and "noise on" not in paths.describe()
    assert "Triton sampling noise off (the noise over the vocabulary differs)" in paths.notes
    assert not fast_paths.choose(EngineConfig(), torch.device("cpu"), torch.float32).triton_noise


def test_the_sampling_race_kernel_goes_by_its_own_check_alone(monkeypatch):
    """Beside the noise kernel's, whatever the attention backend; never on the CPU."""
    monkeypatch.setattr(fast_paths, "triton_problem", lambda *args: "differs from the torch reference by 0.5")
    monkeypatch.setattr(fast_paths, "noise_problem", lambda device: "the noise over the vocabulary differs")
    monkeypatch.setattr(fast_paths, "race_problem", lambda device: None)
    paths = fast_paths.choose(EngineConfig(), CUDA, torch.float32)
    assert paths.triton_race and not paths.triton_noise and "Triton sampling race on" in paths.describe()
    monkeypatch.setattr(fast_paths, "race_problem", lambda device: "a token differs from the reference")
    paths = fast_paths.choose(EngineConfig(), CUDA, torch.bfloat16)
    assert not paths.triton_race and "Triton sampling race off (a token differs from the reference)" in paths.notes
    assert not fast_paths.choose(EngineConfig(), torch.device("cpu"), torch.float32).triton_race


def test_the_host_noise_is_the_cpus_alone():
    cpu = fast_paths.choose(EngineConfig(), torch.device("cpu"), torch.float32)
    assert cpu.host_noise and "numpy sampling noise on" in cpu.describe()
    assert not fast_paths.choose(EngineConfig(), CUDA, torch.bfloat16).host_noise


def test_wide_heads_take_triton_after_a_check_at_their_width(monkeypatch):
    """DeepSeek-V2's latent attention runs over 576-dim rows: Triton attention (its wide tiles),
    checked at that width too, and graphs with the Triton experts; heads past the widest tile the
    kernels are compiled for take the reference, and an explicit request for Triton is refused by name."""
    checked = []
    monkeypatch.setattr(fast_paths, "triton_problem", lambda *args: checked.append(args[3]))
    monkeypatch.setattr(fast_paths, "norm_rope_problem", lambda *args: None)
    monkeypatch.setattr(fast_paths, "noise_problem", lambda device: None)
    assert fast_paths.choose(EngineConfig(), CUDA, torch.bfloat16, head_dim=256).attention == "triton"
    wide = fast_paths.choose(EngineConfig(), CUDA, torch.bfloat16, routed=True, head_dim=576)
    assert wide.attention == "triton" and wide.cuda_graphs and wide.triton_norm_rope
    assert checked == [256, 576]
    wider = fast_paths.choose(EngineConfig(), CUDA, torch.bfloat16, routed=True, head_dim=2048)
    assert wider.attention == "torch" and not wider.cuda_graphs and not wider.triton_norm_rope
    assert any("heads of 2048 dims" in note for note in wider.notes)
    with pytest.raises(ValueError, match="heads of 2048 dims"):
        fast_paths.choose(EngineConfig(attention_backend="triton"), CUDA, torch.bfloat16, head_dim=2048)
