"""S3Diff adapter: loading, degradation-modulated LoRA, restore paths and pipeline integration.

Uses the official-format checkpoints of the S3Diff golden set (random weights) on the tiny SD2.1
fixture; numerical parity with the official code is tested in tests/golden/test_s3diff_golden.py.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from elqproj import (
    CheckpointMismatchError,
    ConfigError,
    InvalidInputError,
    get_restorer_class,
    list_restorers,
    load_restorer,
)
from elqproj.adapters.s3diff import S3DiffRestorer
from elqproj.adapters.s3diff.modulation import LoRAModulation, unet_block_index, vae_block_index
from elqproj.onestep import OneStepOutput, OneStepSD
from elqproj.projector import Projector
from tests.conftest import TINY_SD21, golden_set

GOLDEN = golden_set("s3diff")
WEIGHTS, DE_NET = GOLDEN / "s3diff.pkl", GOLDEN / "de_net.pth"


def _load(**kwargs) -> S3DiffRestorer:
    return load_restorer("s3diff", **{"weights": WEIGHTS, "de_net": DE_NET, "base_model": TINY_SD21,
                                      "device": "cpu", **kwargs})


@pytest.fixture(scope="module")
def restorer() -> S3DiffRestorer:
    return _load()


def _image(seed: int, size: tuple[int, int] = (16, 16)) -> torch.Tensor:
    """A smooth random (1, 3, H, W) image in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)


def _run(restorer: S3DiffRestorer, lq: torch.Tensor, scores: torch.Tensor) -> OneStepOutput:
    """One official pass on an already upscaled (B, 3, 64, 64) input with fixed posterior noise."""
    batch = lq.shape[0]
    pos = restorer.encode_prompt(["a photo"] * batch)
    neg = restorer.encode_prompt(["blur"] * batch)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).expand(batch, -1, -1, -1)
    with torch.no_grad():
        return restorer(lq * 2 - 1, scores, pos, negative_embeds=neg, encoder_noise=noise)


# ------------------------------------------------------------------------------------------ registry
def test_s3diff_is_a_registered_restorer():
    assert "s3diff" in list_restorers()
    assert get_restorer_class("s3diff") is S3DiffRestorer


def test_capabilities_declare_the_non_commercial_base_weights():
    caps = S3DiffRestorer.capabilities
    assert (caps.scale, caps.steps, caps.differentiable, caps.needs_prompt) == (4, 1, True, True)
    assert caps.base_model == "stabilityai/sd-turbo"
    assert caps.default_weights == "zhangap/S3Diff/s3diff.pkl"
    assert "non-commercial" in caps.weights_licence and "sd-turbo" in caps.weights_licence
    assert caps.code_licence == "Apache-2.0"


# -------------------------------------------------------------------------------------- block ids
@pytest.mark.parametrize(("name", "block"), [
    ("down_blocks.0.attentions.0.proj_in", 0),
    ("down_blocks.3.resnets.1.conv2", 3),
    ("mid_block.attentions.0.transformer_blocks.0.attn2.to_k", 4),
    ("up_blocks.0.resnets.0.conv_shortcut", 5),
    ("up_blocks.3.attentions.2.proj_out", 8),
    ("conv_out", 9),
])
def test_unet_block_ids_follow_the_official_map(name, block):
    assert unet_block_index(name) == block


@pytest.mark.parametrize(("name", "block"), [
    ("encoder.down_blocks.2.downsamplers.0.conv", 2),
    ("encoder.mid_block.attentions.0.to_q", 4),
    ("encoder.conv_in", 5),
    ("encoder.conv_out", 5),
])
def test_vae_block_ids_follow_the_official_map(name, block):
    assert vae_block_index(name) == block


def test_every_lora_layer_is_modulated(restorer):
    # The tiny fixture has 164 UNet and 22 VAE-encoder S3Diff LoRA layers (research notes).
    assert len(restorer.unet_modulation.blocks) == 164
    assert len(restorer.vae_modulation.blocks) == 22
    assert all(name.startswith("encoder.") for name in restorer.vae_modulation.blocks)


# --------------------------------------------------------------------------------------- loading
def test_osediff_checkpoint_is_rejected():
    with pytest.raises(CheckpointMismatchError, match="OSEDiff"):
        _load(weights=golden_set("osediff") / "osediff.pkl")


def test_truncated_checkpoint_is_rejected(tmp_path):
    truncated = tmp_path / "s3diff.pkl"
    data = WEIGHTS.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointMismatchError):
        _load(weights=truncated)


def test_wrong_degradation_estimator_is_rejected():
    with pytest.raises(CheckpointMismatchError, match="de_net"):
        _load(de_net=WEIGHTS)


def test_loading_twice_reuses_the_adapter_set(restorer):
    again = _load()
    assert again.engine is restorer.engine and again.adapter_set == restorer.adapter_set
    assert again.unet_modulation is restorer.unet_modulation


@pytest.fixture(scope="module")
def private_engine() -> OneStepSD:
    """An unshared engine that holds S3Diff only (loaded while no adapter set was active)."""
    engine = OneStepSD.from_pretrained(TINY_SD21, device="cpu", shared=False)
    _load(engine=engine)
    return engine


def test_merging_the_modulated_lora_is_refused(private_engine):
    with pytest.raises(ConfigError, match="cannot be merged"):
        private_engine.merge()


def test_the_bare_base_runs_without_the_s3diff_lora(private_engine):
    """With no active set the engine is the base model: S3Diff's (modulated) LoRA layers and its
    fine-tuned conv_in are not reached, so the output equals a fresh base engine's bit for bit."""
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    base = OneStepSD.from_pretrained(TINY_SD21, device="cpu", shared=False)
    with torch.no_grad(), private_engine.using(None):
        bare = private_engine.predict_noise(latent, private_engine.encode_prompt(["dog"]))
    with torch.no_grad():
        expected = base.predict_noise(latent, base.encode_prompt(["dog"]))
    torch.testing.assert_close(bare, expected, rtol=0, atol=0)


def test_unmodulated_use_of_the_adapter_set_raises(restorer):
    latent = torch.zeros(1, 4, 8, 8)
    embeds = restorer.encode_prompt([""])
    with restorer.engine.using(restorer.adapter_set), pytest.raises(ConfigError, match="modulation"):
        restorer.engine.predict_noise(latent, embeds)


# ------------------------------------------------------------------------------------ modulation
def test_degradation_scores_change_the_output(restorer):
    lq = _image(1, (64, 64))
    clean = _run(restorer, lq, torch.tensor([[0.1, 0.1]])).image
    degraded = _run(restorer, lq, torch.tensor([[0.9, 0.8]])).image
    assert (clean - degraded).abs().max() > 0.1


def test_each_image_of_a_batch_gets_its_own_modulation(restorer):
    lq = _image(2, (64, 64))
    scores = torch.tensor([[0.2, 0.7], [0.9, 0.1]])
    batch = _run(restorer, lq.expand(2, -1, -1, -1), scores)
    for i in range(2):
        alone = _run(restorer, lq, scores[i : i + 1])
        # The modulated VAE encoder; later stages of the random tiny model amplify float32 rounding
        # (batch-size-dependent kernels) ~1000x, so they are compared in the next test, layer by layer.
        torch.testing.assert_close(batch.posterior_mean[i : i + 1], alone.posterior_mean, rtol=0, atol=1e-5)
    assert (batch.model_pred[0] - batch.model_pred[1]).abs().max() > 0.1


def test_lora_modulation_is_the_official_per_sample_formula():
    """y = base(x) + (alpha/r)·B(A(x) ·_rank M[b, block]) for conv and linear LoRA layers."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"conv": torch.nn.Conv2d(3, 5, 3, padding=1), "proj": torch.nn.Linear(5, 6)})
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["conv", "proj"], init_lora_weights=False),
                            model, adapter_name="s3")
    hooks = LoRAModulation(model, "s3", lambda name: {"conv": 0, "proj": 1}[name])
    hooks.matrices = torch.randn(2, 2, 4, 4)  # (B, blocks, r, r)
    x, tokens = torch.randn(2, 3, 6, 6), torch.randn(2, 7, 5)
    conv, proj = model["conv"], model["proj"]
    with torch.no_grad():  # A computed functionally: calling the lora_A module would run the hook
        down = torch.nn.functional.conv2d(x, conv.lora_A["s3"].weight, padding=1)
        down = torch.einsum("bkhw,bkj->bjhw", down, hooks.matrices[:, 0])
        torch.testing.assert_close(conv(x), conv.base_layer(x) + 2 * conv.lora_B["s3"](down))
        down = tokens @ proj.lora_A["s3"].weight.T @ hooks.matrices[:, 1]
        torch.testing.assert_close(proj(tokens), proj.base_layer(tokens) + 2 * proj.lora_B["s3"](down))


def test_forward_is_differentiable_through_the_estimator(restorer):
    lq = _image(3, (16, 16)).requires_grad_()
    scores = restorer.estimate_degradation(lq)
    upscaled = torch.nn.functional.interpolate(lq, scale_factor=4, mode="bilinear", align_corners=False)
    pos = restorer.encode_prompt(["a photo"])
    out = restorer(upscaled * 2 - 1, scores, pos, encoder_noise=torch.zeros(1, 4, 8, 8))
    out.image.mean().backward()
    assert lq.grad is not None and lq.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------- restore
def test_restore_pil_returns_a_4x_pil_image(restorer):
    lq = Image.fromarray((_image(4, (12, 16))[0].permute(1, 2, 0).numpy() * 255).astype("uint8"))
    out = restorer.restore(lq, seed=0)
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (64, 48)


def test_restore_tensor_returns_a_reproducible_tensor(restorer):
    lq = _image(5, (16, 16))
    first = restorer.restore(lq, seed=7)
    second = restorer.restore(lq, seed=7)
    assert first.shape == (1, 3, 64, 64) and first.dtype == torch.float32
    assert 0 <= first.min() and first.max() <= 1
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_restore_rejects_scores_for_another_batch(restorer):
    with pytest.raises(InvalidInputError, match="deg_score"):
        restorer.restore(_image(6), deg_score=torch.rand(2, 2))


# --------------------------------------------------------------------------------------- pipeline
def test_projector_restores_through_a_loaded_s3diff(restorer):
    proj = Projector.from_base(TINY_SD21, device="cpu")
    res = proj.restore(_image(8, (64, 64)), backend=restorer, prompt="dog", seed=0, process_size=0)
    assert res.image.shape == (1, 3, 64, 64)
    assert res.prompts == [["dog"], ["dog"]]


def test_projector_restores_through_s3diff_by_name():
    proj = Projector.from_base(TINY_SD21, device="cpu")
    img = Image.fromarray((_image(9, (64, 64))[0].permute(1, 2, 0).numpy() * 255).astype("uint8"))
    res = proj.restore(img, backend="s3diff", prompt="dog", seed=0, process_size=0,
                       backend_options={"weights": WEIGHTS, "de_net": DE_NET, "base_model": TINY_SD21})
    assert isinstance(res.image, Image.Image) and res.image.size == (64, 64)
