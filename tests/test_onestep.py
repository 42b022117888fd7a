"""The shared one-step engine: adapter sets, sharing, prompt cache, long prompts, merge, devices."""

from __future__ import annotations

import pytest
import torch

from elqproj import ConfigError, DeviceError, Projector, load_restorer
from elqproj.errors import CheckpointMismatchError, InvalidInputError, WeightsNotFoundError
from elqproj.devices import resolve_device_dtype
from elqproj.onestep import OneStepSD
from tests.conftest import GOLDEN_DIR, OSEDIFF_GOLDEN_PKL, TINY_SD21


@pytest.fixture(scope="module")
def shared():
    projector = Projector.from_base(TINY_SD21, device="cpu")
    osediff = load_restorer("osediff", weights=OSEDIFF_GOLDEN_PKL, base_model=TINY_SD21, device="cpu")
    return projector, osediff


def _x(seed: int = 0, shape=(1, 3, 64, 72)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_projector_and_osediff_share_one_base(shared):
    projector, osediff = shared
    assert projector.engine is osediff.engine
    unet_params = {p.data_ptr() for p in projector.engine.unet.parameters()}
    assert all(p.data_ptr() in unet_params for p in osediff.engine.unet.parameters())


def test_switching_sets_reproduces_a_private_engine(shared):
    projector, osediff = shared
    x = _x()
    noise = torch.randn(1, 4, 8, 9, generator=torch.Generator().manual_seed(1))
    private = load_restorer("osediff", weights=OSEDIFF_GOLDEN_PKL, base_model=TINY_SD21, device="cpu",
                            engine=OneStepSD.from_pretrained(TINY_SD21, device="cpu", shared=False))
    with torch.no_grad():
        embeds = osediff.encode_prompt(["dog"])
        expected = private(x, embeds, encoder_noise=noise).image
        projector(x, embeds, encoder_noise=noise)  # activates f's set (different conv_in and LoRA)
        got = osediff(x, embeds, encoder_noise=noise).image
        again_f = projector(x, embeds, encoder_noise=noise).image
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.allclose(again_f, got)


def test_conv_in_override_follows_the_active_set(shared):
    projector, osediff = shared
    engine = projector.engine
    with engine.using(osediff.adapter_set):
        conv_g = engine.base_parameter("unet", "conv_in.weight").clone()
    with engine.using(projector.adapter_set):
        conv_f = engine.base_parameter("unet", "conv_in.weight").clone()
    assert not torch.equal(conv_f, conv_g)


def test_prompt_embeddings_are_cached_per_string(shared):
    engine = shared[0].engine
    calls = []
    handle = engine.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        a = engine.encode_prompt(["a cached prompt", "another one"])
        b = engine.encode_prompt(["another one", "a cached prompt"])
    finally:
        handle.remove()
    assert len(calls) == 2
    torch.testing.assert_close(a[0], b[1])


def test_long_prompt_chunks_are_concatenated(shared):
    engine = shared[0].engine
    long = ", ".join(f"tag{i}" for i in range(40))  # far more than 75 byte-level tokens
    truncated = engine.encode_prompt([long])
    chunked = engine.encode_prompt([long, "short"], long_prompt="chunk")
    assert truncated.shape[1] == 77 and chunked.shape[1] % 77 == 0 and chunked.shape[1] > 77
    torch.testing.assert_close(chunked[:1, :77], truncated)
    torch.testing.assert_close(chunked[1:, :77], engine.encode_prompt(["short"]))


def test_prompts_must_be_strings(shared):
    with pytest.raises(InvalidInputError, match="Prompts must be strings, got int"):
        shared[0].engine.encode_prompt([3])


def test_merge_gives_the_same_result_and_needs_a_private_engine(shared):
    with pytest.raises(ConfigError, match="exactly one adapter set"):
        shared[0].engine.merge()
    merged = load_restorer("osediff", weights=OSEDIFF_GOLDEN_PKL, base_model=TINY_SD21, device="cpu", merge_lora=True)
    x, noise = _x(2), torch.randn(1, 4, 8, 9, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        embeds = merged.encode_prompt(["dog"])
        got = merged(x, embeds, encoder_noise=noise).image
        expected = shared[1](x, embeds, encoder_noise=noise).image
    assert merged.engine is not shared[1].engine
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_encoder_noise_shape_is_checked(shared):
    with pytest.raises(InvalidInputError, match=r"encoder_noise has shape \(1, 4, 2, 2\), expected \(1, 4, 8, 9\)"):
        shared[1](_x(), shared[1].encode_prompt([""]), encoder_noise=torch.zeros(1, 4, 2, 2))


def test_seeded_runs_repeat_and_differ_across_seeds(shared):
    osediff = shared[1]
    x = _x(3)
    with torch.no_grad():
        embeds = osediff.encode_prompt([""])
        a = osediff(x, embeds, seed=5).image
        b = osediff(x, embeds, seed=5).image
        c = osediff(x, embeds, seed=6).image
        mean = osediff(x, embeds, sample_posterior=False).image
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c) and not torch.allclose(a, mean)


def test_osediff_refuses_an_s3diff_checkpoint():
    with pytest.raises(CheckpointMismatchError, match="S3Diff"):
        load_restorer("osediff", weights=GOLDEN_DIR / "s3diff" / "s3diff.pkl", base_model=TINY_SD21, device="cpu")


def test_base_that_is_not_sd_is_refused(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(WeightsNotFoundError, match="lacks unet/config.json, vae/config.json"):
        OneStepSD.from_pretrained(tmp_path, device="cpu")


@pytest.mark.parametrize(
    ("device", "dtype", "message"),
    [("cpu", "fp16", "fp16 is not supported on the CPU"), ("cpu", "int8", "Unknown dtype"),
     ("tpu", None, "Unknown device")],
)
def test_bad_device_or_dtype(device, dtype, message):
    with pytest.raises(DeviceError, match=message):
        resolve_device_dtype(device, dtype)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_requested_without_cuda():
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device_dtype("cuda", None)


def test_bf16_runs_on_cpu():
    engine = OneStepSD.from_pretrained(TINY_SD21, device="cpu", dtype="bf16", shared=False)
    with torch.no_grad():
        out = engine(_x().bfloat16(), engine.encode_prompt(["dog"]), seed=0)
    assert out.image.dtype == torch.bfloat16 and torch.isfinite(out.image.float()).all()


def test_a_new_projector_starts_from_the_base_conv_in_whatever_set_is_active(shared):
    _, osediff = shared
    engine = osediff.engine
    engine.activate(osediff.adapter_set)
    fresh = Projector.from_engine(engine)
    with engine.using(fresh.adapter_set):
        conv_fresh = engine.base_parameter("unet", "conv_in.weight").clone()
    with engine.using(None):
        conv_base = engine.base_parameter("unet", "conv_in.weight").clone()
    torch.testing.assert_close(conv_fresh, conv_base, rtol=0, atol=0)


def test_a_checkpoint_that_fails_to_load_leaves_no_adapter_set(shared, tmp_path):
    from elqproj.hub import load_checkpoint

    engine = shared[0].engine
    before = engine.adapter_sets()
    ckpt = load_checkpoint(OSEDIFF_GOLDEN_PKL)
    ckpt["rank_unet"] = 8  # LoRA tensors of rank 4 no longer fit
    torch.save(ckpt, tmp_path / "bad_rank.pkl")
    with pytest.raises(CheckpointMismatchError, match="wrong shape"):
        load_restorer("osediff", weights=tmp_path / "bad_rank.pkl", base_model=TINY_SD21, device="cpu")
    assert engine.adapter_sets() == before
    owners = {name.split("__")[0] for name in [*engine.unet.peft_config, *engine.vae.peft_config]}
    assert owners <= set(before)  # no LoRA of the failed load is left on the shared base


def test_a_trainable_set_keeps_its_gradients_across_switches_and_no_other_set_gets_any():
    engine = OneStepSD.from_pretrained(TINY_SD21, device="cpu", shared=False)
    student = Projector.from_engine(engine)
    frozen = load_restorer("osediff", weights=OSEDIFF_GOLDEN_PKL, engine=engine)
    engine.set_trainable(student.adapter_set)
    trained = {id(p) for p in engine.trainable_parameters(student.adapter_set)}
    conv_in = engine.base_parameter("unet", "conv_in.weight")
    assert id(conv_in) in trained and len(trained) > 1

    def requiring_grad() -> set[int]:
        return {id(p) for p in engine.parameters() if p.requires_grad}

    for name in (student.adapter_set, frozen.adapter_set, None, student.adapter_set):
        engine.activate(name)  # peft's set_adapter alone would make whatever it activates trainable
        assert requiring_grad() == (trained if name == student.adapter_set else set()), name
    engine.set_trainable(student.adapter_set, False)
    assert requiring_grad() == set()


def test_osediff_weights_saved_after_training_in_place_load_back_identically(tmp_path):
    engine = OneStepSD.from_pretrained(TINY_SD21, device="cpu", shared=False)
    osediff = load_restorer("osediff", weights=OSEDIFF_GOLDEN_PKL, engine=engine)
    engine.set_trainable(osediff.adapter_set)
    engine.activate(osediff.adapter_set)
    with torch.no_grad():  # stands in for optimiser steps on the LoRA and on the fully trained conv_in
        for param in engine.trainable_parameters(osediff.adapter_set):
            param.add_(0.01)
    path = osediff.save_weights(tmp_path / "osediff.safetensors")
    reloaded = load_restorer("osediff", weights=path,
                             engine=OneStepSD.from_pretrained(TINY_SD21, device="cpu", shared=False))
    x, noise = _x(), torch.randn(1, 4, 8, 9, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        embeds = osediff.encode_prompt(["dog"])
        torch.testing.assert_close(reloaded(x, embeds, encoder_noise=noise).image,
                                   osediff(x, embeds, encoder_noise=noise).image, rtol=0, atol=0)


def test_a_decoder_that_overflows_raises_a_numerical_error_instead_of_returning_a_black_image():
    from elqproj import NumericalError

    projector = Projector.from_base(TINY_SD21, device="cpu", shared=False)
    with torch.no_grad():
        projector.engine.vae.decoder.conv_out.bias.fill_(float("inf"))
    with pytest.raises(NumericalError, match="VAE decoder produced .* NaN or infinite values in torch.float32"):
        projector.project(torch.rand(1, 3, 64, 64), prompt="a photo")


def test_the_numerical_error_names_the_float16_remedy():
    from elqproj import NumericalError
    from elqproj.devices import check_finite

    x = torch.tensor([1.0, float("nan")])
    with pytest.raises(NumericalError, match="1 NaN .* float16 overflowed: load the models with dtype=torch.bfloat16"):
        check_finite(x, what="The UNet", dtype=torch.float16)
    assert check_finite(x[:1], what="The UNet", dtype=torch.float16) is not None
