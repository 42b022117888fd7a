"""SeeSR adapter: loading the official folders, the networks, and ``restore`` on tiny weights.

The tiny SeeSR folder of the golden set (random weights in the official layout) and the tiny SD2.1
fixture stand in for the release; DAPE is the tiny RAM/DAPE pair of the RAM golden set, loaded through the
public extractor loader. Golden parity itself lives in tests/golden/test_seesr_golden.py.
"""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from elqproj import Projector, list_restorers, load_restorer
from elqproj.adapters.seesr import SeeSRRestorer
from elqproj.errors import CheckpointMismatchError, InvalidInputError, WeightsNotFoundError
from elqproj.tiling import TilingConfig
from tests.conftest import TINY_SD21, golden_set

SEESR_DIR = golden_set("seesr") / "seesr"
RAM_DIR = golden_set("ram")
DAPE_OPTIONS = {
    "ram_weights": RAM_DIR / "ram_tiny.pth",
    "tag_list": RAM_DIR / "tags" / "ram_tag_list.txt",
    "tag_thresholds": RAM_DIR / "tags" / "ram_tag_list_threshold.txt",
}
FAST = {"steps": 1, "process_size": 0, "progress": False}


@pytest.fixture(scope="module")
def restorer() -> SeeSRRestorer:
    return load_restorer("seesr", weights=SEESR_DIR, base_model=TINY_SD21, device="cpu", prompt_extractor="dape",
                         prompt_extractor_weights=RAM_DIR / "dape_tiny.pth", prompt_extractor_options=DAPE_OPTIONS)


@pytest.fixture
def lq() -> torch.Tensor:
    return torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def _features(batch: int = 1, tokens: int = 5) -> torch.Tensor:
    return torch.randn(batch, tokens, 512, generator=torch.Generator().manual_seed(4))


def _copy_seesr(tmp_path):
    target = tmp_path / "seesr"
    shutil.copytree(SEESR_DIR, target)
    for path in target.rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)
    return target


class _CallCounter:
    def __init__(self, *modules: torch.nn.Module) -> None:
        self.calls = {id(m): 0 for m in modules}
        self.handles = [m.register_forward_pre_hook(self._count) for m in modules]

    def _count(self, module, args):
        self.calls[id(module)] += 1

    def __getitem__(self, module: torch.nn.Module) -> int:
        return self.calls[id(module)]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


# ------------------------------------------------------------------------------------------ loading


def test_seesr_is_registered_with_its_capabilities():
    assert "seesr" in list_restorers()
    caps = SeeSRRestorer.capabilities
    assert (caps.steps, caps.scale, caps.uses_image_features, caps.differentiable) == (50, 4, True, False)
    assert caps.supports_fp16 and caps.supports_bf16
    assert caps.code_licence == "Apache-2.0"


def test_loader_rejects_unknown_options():
    with pytest.raises(InvalidInputError, match="lora_scale"):
        load_restorer("seesr", weights=SEESR_DIR, base_model=TINY_SD21, device="cpu", lora_scale=1.0)


def test_loader_without_weights_offline_names_the_drive_folder_and_the_download_command():
    with pytest.raises(WeightsNotFoundError, match=r"drive.google.com.*elqproj download seesr"):
        load_restorer("seesr", base_model=TINY_SD21, device="cpu")


def test_checkpoint_with_foreign_keys_names_them(tmp_path):
    folder = _copy_seesr(tmp_path)
    weights = folder / "controlnet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["controlnet_extra.weight"] = state.pop("controlnet_mid_block.weight")
    save_file(state, weights)
    with pytest.raises(CheckpointMismatchError, match="controlnet_mid_block.weight") as err:
        load_restorer("seesr", weights=folder, base_model=TINY_SD21, device="cpu")
    assert "controlnet_extra.weight" in str(err.value)


def test_checkpoint_with_a_wrong_shape_names_the_key(tmp_path):
    folder = _copy_seesr(tmp_path)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    key = "mid_block.image_attentions.0.transformer_blocks.0.attn2.to_k.weight"
    state[key] = torch.zeros(state[key].shape[0], 768)  # CLIP-L width instead of RAM's 512
    save_file(state, weights)
    with pytest.raises(CheckpointMismatchError, match="wrong shape.*attn2.to_k.weight"):
        load_restorer("seesr", weights=folder, base_model=TINY_SD21, device="cpu")


def test_a_plain_stable_diffusion_unet_is_not_accepted_as_seesr(tmp_path):
    folder = _copy_seesr(tmp_path)
    shutil.rmtree(folder / "unet")
    shutil.copytree(TINY_SD21 / "unet", folder / "unet")
    with pytest.raises(CheckpointMismatchError, match="use_image_cross_attention"):
        load_restorer("seesr", weights=folder, base_model=TINY_SD21, device="cpu")


def test_full_release_unet_file_gives_the_same_network(tmp_path, restorer):
    """The release ships the whole UNet; the golden folder only its image attentions over the base."""
    folder = _copy_seesr(tmp_path)
    full = {k: v.contiguous() for k, v in restorer.unet.state_dict().items()}
    assert len(load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")) < len(full)
    save_file(full, folder / "unet" / "diffusion_pytorch_model.safetensors")
    loaded = load_restorer("seesr", weights=folder, base_model=TINY_SD21, device="cpu")
    theirs = loaded.unet.state_dict()
    assert theirs.keys() == full.keys()
    assert all(torch.equal(theirs[k], full[k]) for k in full)


# ----------------------------------------------------------------------------------------- networks


def test_unet_requires_the_image_features(restorer):
    x = torch.zeros(1, 4, 8, 8)
    text = torch.zeros(1, 77, restorer.unet.config.cross_attention_dim)
    with pytest.raises(InvalidInputError, match="image_encoder_hidden_states"):
        restorer.unet(x, 1, encoder_hidden_states=text)


def test_image_features_condition_the_unet(restorer):
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.zeros(1, 77, restorer.unet.config.cross_attention_dim)
    with torch.no_grad():
        first = restorer.unet(x, 500, encoder_hidden_states=text, image_encoder_hidden_states=_features()).sample
        second = restorer.unet(x, 500, encoder_hidden_states=text, image_encoder_hidden_states=-_features()).sample
    assert not torch.allclose(first, second)


def test_a_deep_copy_runs_its_own_image_attentions(restorer):
    unet = copy.deepcopy(restorer.unet)
    with torch.no_grad():
        for block in unet.down_blocks[:3]:
            for attention in block.image_attentions:
                attention.proj_out.weight.zero_()
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.zeros(1, 77, unet.config.cross_attention_dim)
    kwargs = {"encoder_hidden_states": text, "image_encoder_hidden_states": _features()}
    with torch.no_grad():
        original_before = restorer.unet(x, 500, **kwargs).sample
        copied = unet(x, 500, **kwargs).sample
        original_after = restorer.unet(x, 500, **kwargs).sample
    assert torch.equal(original_before, original_after)
    assert not torch.allclose(copied, original_after)


# ------------------------------------------------------------------------------------------ restore


def test_pil_input_gives_a_pil_image_upscale_times_larger(restorer):
    image = Image.fromarray((torch.rand(12, 10, 3) * 255).to(torch.uint8).numpy())
    out = restorer.restore(image, prompt="bird", image_features=_features(), steps=1, process_size=64,
                           progress=False)
    assert isinstance(out, Image.Image)
    assert (out.mode, out.size) == ("RGB", (40, 48))  # enlarged to a 16-px short side, resized back to ×4


def test_an_image_file_is_restored_like_the_pil_image(restorer, tmp_path):
    image = Image.fromarray((torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(2)) * 255)
                            .to(torch.uint8).numpy())
    image.save(tmp_path / "lq.png")
    from_file = restorer.restore(tmp_path / "lq.png", prompt="bird", image_features=_features(), **FAST)
    from_pil = restorer.restore(image, prompt="bird", image_features=_features(), **FAST)
    assert isinstance(from_file, Image.Image)
    assert from_file.tobytes() == from_pil.tobytes()


def test_tensor_batch_gives_a_tensor_batch_in_unit_range(restorer):
    lq = torch.rand(2, 3, 16, 20, generator=torch.Generator().manual_seed(1))
    out = restorer.restore(lq, prompt=["bird", "tree"], image_features=_features(), **FAST)
    assert out.shape == (2, 3, 64, 80) and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1


def test_the_seed_makes_runs_reproducible(restorer, lq):
    runs = [restorer.restore(lq, prompt="bird", image_features=_features(), seed=s, **FAST) for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("steps", [1, 3])
def test_steps_sets_the_number_of_network_evaluations(restorer, lq, steps):
    counter = _CallCounter(restorer.unet, restorer.controlnet)
    try:
        restorer.restore(lq, prompt="bird", image_features=_features(), steps=steps, process_size=0, progress=False)
    finally:
        counter.remove()
    assert counter[restorer.unet] == steps
    assert counter[restorer.controlnet] == steps


def test_latent_tiling_evaluates_every_tile_each_step(restorer, lq):
    counter = _CallCounter(restorer.unet)
    try:
        restorer.restore(lq, prompt="bird", image_features=_features(), steps=2, process_size=0, progress=False,
                         tiling=TilingConfig(latent_tile=6, latent_overlap=2))
    finally:
        counter.remove()
    assert counter[restorer.unet] == 2 * 4  # an 8x8 latent in 6x6 tiles: 2 x 2 tiles


@pytest.mark.parametrize(("guidance_scale", "rows"), [(5.5, 2), (1.0, 1)])
def test_guidance_runs_negative_and_positive_rows_only_above_one(restorer, lq, guidance_scale, rows):
    steps = []
    restorer.restore(lq, prompt="bird", image_features=_features(), guidance_scale=guidance_scale,
                     callback=steps.append, **FAST)
    assert steps[0].model_output.shape[0] == rows
    assert steps[0].noise_pred.shape[0] == 1


@pytest.mark.parametrize("progress", [True, False])
def test_progress_bar_over_the_steps_only_when_asked(restorer, lq, capsys, progress):
    restorer.restore(lq, prompt="bird", image_features=_features(), steps=2, process_size=0, progress=progress)
    shown = "SeeSR" in capsys.readouterr().err
    assert shown is progress


def test_without_a_prompt_the_extractor_supplies_tags_and_features(restorer, lq):
    extracted = restorer.prompt_extractor.extract(lq)
    implicit = restorer.restore(lq, **FAST)
    explicit = restorer.restore(lq, prompt=extracted.texts, image_features=extracted.image_features, **FAST)
    assert torch.equal(implicit, explicit)


def test_without_an_extractor_a_prompt_and_features_are_required(restorer, lq):
    bare = SeeSRRestorer(restorer.unet, restorer.controlnet, restorer.vae, restorer.text_encoder,
                         restorer.tokenizer, restorer.scheduler)
    with pytest.raises(InvalidInputError, match="prompt_extractor='dape'"):
        bare.restore(lq, prompt="bird", **FAST)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"strength": 0.5}, "strength"),
        ({"color_fix": "histogram"}, "color_fix"),
        ({"steps": 0}, "steps"),
        ({"start_point": "latent"}, "start_point"),
        ({"upscale": 0}, "upscale"),
        ({"image_features": torch.zeros(1, 5, 256)}, "image_features"),
        ({"prompt": ["bird", "tree"]}, "one per image"),
        ({"latents": torch.zeros(1, 4, 4, 4)}, "latents"),
        ({"encoder_noise": torch.zeros(1, 4, 8)}, "encoder_noise"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_bad_options_are_refused_with_a_clear_error(restorer, lq, options, message):
    kwargs = {"prompt": "bird", "image_features": _features(), **FAST, **options}
    with pytest.raises(InvalidInputError, match=message):
        restorer.restore(lq, **kwargs)


def test_bf16_on_cpu_gives_a_float32_image(lq):
    restorer = load_restorer("seesr", weights=SEESR_DIR, base_model=TINY_SD21, device="cpu", dtype=torch.bfloat16)
    assert restorer.unet.dtype == torch.bfloat16
    out = restorer.restore(lq, prompt="bird", image_features=_features(), **FAST)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_projector_restores_through_seesr_end_to_end(restorer):
    projector = Projector.from_base(TINY_SD21, device="cpu")
    elq = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    result = projector.restore(elq, backend=restorer, prompt_extractor=restorer.prompt_extractor, lfo=1, seed=0,
                               process_size=0, restorer_options={"steps": 1})
    assert result.image.shape == (1, 3, 64, 64)
    assert len(result.prompts) == 3  # c¹, c², and the prompt of g


def test_a_decoder_overflow_raises_a_numerical_error(restorer, lq, monkeypatch):
    from elqproj import NumericalError

    monkeypatch.setattr(restorer.vae.decoder.conv_out.bias, "data", torch.full_like(restorer.vae.decoder.conv_out.bias, float("inf")))
    with pytest.raises(NumericalError, match="VAE decoder produced"):
        restorer.restore(lq, prompt="a cat", image_features=_features(), seed=0, **FAST)
