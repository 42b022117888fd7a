"""Training building blocks: the VSD regulariser UNet, prompt dropout, LPIPS loading, degradation configs, checkpoints
(Hugging Face data: test_hf_dataset.py)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from elqproj.errors import CheckpointMismatchError, ConfigError
from elqproj.training import checkpoints
from elqproj.training.data import degradation_config
from elqproj.training.perceptual import load_lpips
from elqproj.training.prompting import drop_prompts
from elqproj.schedule import x0_from_epsilon
from elqproj.training.regularizer import VSDRegularizer
from tests.conftest import TINY_SD21


@pytest.fixture(scope="module")
def regularizer():
    return VSDRegularizer.from_pretrained(TINY_SD21)


def _noisy_inputs(regularizer, seed=0):
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    noise = torch.randn(2, 4, 8, 8, generator=gen)
    timesteps = torch.tensor([20, 900])
    embeds = torch.randn(2, 77, 32, generator=gen)
    return latents, noise, timesteps, embeds


def test_x0_from_epsilon_inverts_the_forward_diffusion(regularizer):
    latents, noise, timesteps, _ = _noisy_inputs(regularizer)
    noisy = regularizer.add_noise(latents, noise, timesteps)
    assert torch.allclose(x0_from_epsilon(noisy, noise, timesteps, regularizer.alphas_cumprod), latents, atol=1e-4)


def test_fresh_regulariser_equals_the_pretrained_unet_and_diverges_once_trained(regularizer):
    latents, noise, timesteps, embeds = _noisy_inputs(regularizer)
    noisy = regularizer.add_noise(latents, noise, timesteps)
    negative = torch.zeros_like(embeds)
    # guidance 1 leaves the conditional prediction: with LoRA B = 0 both UNets are the pretrained one
    assert torch.allclose(regularizer.regularizer_x0(noisy, timesteps, embeds),
                          regularizer.pretrained_x0(noisy, timesteps, embeds, negative, 1.0), atol=1e-5)
    saved = regularizer.lora_state_dict()
    with torch.no_grad():
        for param in regularizer.lora_parameters():
            param.add_(0.1)
    try:
        assert not torch.allclose(regularizer.regularizer_x0(noisy, timesteps, embeds),
                                  regularizer.pretrained_x0(noisy, timesteps, embeds, negative, 1.0), atol=1e-3)
    finally:
        regularizer.load_lora_state_dict(saved)


def test_only_the_regulariser_lora_is_trainable(regularizer):
    trainable = [name for name, p in regularizer.named_parameters() if p.requires_grad]
    assert trainable and all(".vsd_regularizer." in name for name in trainable)
    assert len(trainable) == len(regularizer.lora_parameters())


def test_regulariser_state_of_another_rank_is_refused(regularizer):
    other = VSDRegularizer.from_pretrained(TINY_SD21, lora_rank=2)
    with pytest.raises(CheckpointMismatchError, match=r"another shape .*\(expected \(4,"):
        regularizer.load_lora_state_dict(other.lora_state_dict())


def test_regulariser_state_with_other_keys_is_refused(regularizer):
    with pytest.raises(CheckpointMismatchError, match="1 unexpected"):
        regularizer.load_lora_state_dict(regularizer.lora_state_dict() | {"unexpected": torch.zeros(1)})


def test_prompt_dropout_is_seeded_and_has_the_requested_rate():
    prompts = [f"tag {i}" for i in range(2000)]
    first = drop_prompts(prompts, 0.3, torch.Generator().manual_seed(0))
    again = drop_prompts(prompts, 0.3, torch.Generator().manual_seed(0))
    assert first == again
    assert 0.27 < first.count("") / len(prompts) < 0.33
    assert all(kept in ("", original) for kept, original in zip(first, prompts))
    assert drop_prompts(prompts[:5], 0.0, torch.Generator()) == prompts[:5]
    assert drop_prompts(prompts[:5], 1.0, torch.Generator()) == [""] * 5


def test_random_backbone_lpips_is_zero_on_identical_images_only():
    lpips = load_lpips("alex", backbone="random")
    a = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert lpips(a, a).item() == pytest.approx(0.0, abs=1e-7)
    assert lpips(a, -a).item() > 0
    assert not any(p.requires_grad for p in lpips.parameters())


def test_lpips_backbone_loads_from_a_torchvision_state_dict(tmp_path):
    from torchvision.models import alexnet

    features = {k: v for k, v in alexnet(weights=None).state_dict().items() if k.startswith("features.")}
    save_file(features, str(tmp_path / "alexnet.safetensors"))
    lpips = load_lpips("alex", backbone=tmp_path / "alexnet.safetensors")
    assert torch.equal(lpips.net.slice1[0].weight, features["features.0.weight"])
    assert torch.equal(lpips.net.slice5.get_submodule("10").bias, features["features.10.bias"])


def test_lpips_backbone_must_be_a_known_choice_or_a_file(tmp_path):
    with pytest.raises(ConfigError, match="neither"):
        load_lpips("vgg", backbone=tmp_path / "missing.pth")


def test_degradation_overrides_merge_into_the_preset():
    config = degradation_config({"preset": "elq", "final_scale": [4, 4], "stage1": {"resize": {"range": [0.2, 1.5]}}})
    elq = degradation_config("elq")
    assert config.final_scale == (4, 4) and config.stage1.resize.range == (0.2, 1.5)
    assert config.stage1.noise == elq.stage1.noise and config.stage2 == elq.stage2


def test_bad_degradation_override_is_a_config_error():
    with pytest.raises(ConfigError):
        degradation_config({"preset": "osediff", "final_scale": [8, 4]})


def _complete(path):
    path.mkdir(parents=True)
    checkpoints.write_trainer_state(path, {"global_step": int(path.name.split("-")[1])})


def test_latest_checkpoint_is_the_newest_complete_one(tmp_path):
    for step in (5, 20, 100):
        _complete(tmp_path / f"checkpoint-{step}")
    (tmp_path / "checkpoint-300").mkdir()   # interrupted while saving: no trainer_state.json
    assert checkpoints.resolve_resume(tmp_path, "latest") == tmp_path / "checkpoint-100"
    assert checkpoints.resolve_resume(tmp_path / "empty", "latest") is None
    assert checkpoints.resolve_resume(tmp_path, None) is None
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        checkpoints.resolve_resume(tmp_path, str(tmp_path / "checkpoint-300"))


def test_pruning_keeps_the_newest_checkpoints(tmp_path):
    for step in (1, 2, 3):
        _complete(tmp_path / f"checkpoint-{step}")
    removed = checkpoints.prune_checkpoints(tmp_path, keep=2)
    assert removed == [tmp_path / "checkpoint-1"]
    assert [step for step, _ in checkpoints.list_checkpoints(tmp_path)] == [2, 3]
