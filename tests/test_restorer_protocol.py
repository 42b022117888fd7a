"""The restorer protocol: the tensor core the pipeline calls, capabilities per loaded model and their
enforcement, and restorers that recognise their own checkpoint files."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from elqproj import CheckpointMismatchError, ConfigError, InvalidInputError, load_restorer
from elqproj.errors import ImageTooLargeError
from elqproj.adapters.base import RESTORERS, identify_restorer, register_restorer
from elqproj.tiling import TilingConfig
from elqproj.value_range import signed_to_unit, unit_to_signed
from tests.conftest import OSEDIFF_GOLDEN_PKL, TINY_SD21, golden_set
from tests.identity_restorer import IdentityRestorer


@pytest.fixture(scope="module")
def osediff():
    return load_restorer("osediff", weights=OSEDIFF_GOLDEN_PKL, base_model=TINY_SD21, device="cpu")


def _batch(height: int, width: int, batch: int = 1) -> torch.Tensor:
    return unit_to_signed(torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0)))


def test_capabilities_describe_the_loaded_model(osediff):
    engine = osediff.engine
    assert osediff.capabilities.size_multiple == engine.vae_scale_factor == 8
    assert osediff.capabilities.min_side == engine.min_image_side
    assert osediff.capabilities.value_range == "signed" and osediff.capabilities.color_fix == "adain"
    assert type(osediff).capabilities.min_side == 8  # the class keeps the defaults declared before loading


def test_the_edge_is_the_tensor_core_plus_sizing_and_colour_fix(osediff):
    """restore() on a sized tensor at ×1 without colour fix gives exactly what restore_batch gives."""
    x = torch.rand(1, 3, 64, 72, generator=torch.Generator().manual_seed(1))
    edge = osediff.restore(x, prompt="a dog", seed=3, upscale=1, process_size=0, color_fix="none")
    core = signed_to_unit(osediff.restore_batch(unit_to_signed(x), prompts=["a dog"], seed=3))
    torch.testing.assert_close(edge, core, rtol=0, atol=0)


@pytest.mark.parametrize(("height", "width", "message"), [(60, 64, "multiples of 8"), (40, 40, "at least")])
def test_the_core_refuses_a_batch_that_is_not_sized_for_the_model(osediff, height, width, message):
    if message == "at least":
        height = width = osediff.capabilities.min_side - 8
    with pytest.raises(InvalidInputError, match=message):
        osediff.restore_batch(_batch(height, width))


def test_the_edge_refuses_a_size_over_the_pixel_budget_before_enlarging_it(osediff):
    """The official pre-enlargement makes a 1x4000 strip 128x512000, then x4: refused, not allocated."""
    with pytest.raises(ImageTooLargeError, match=r"1x4000 \(H x W\) image would be processed at 512x2048000"):
        osediff.restore(torch.rand(1, 3, 1, 4000))


def test_the_core_refuses_a_batch_on_another_dtype(osediff):
    with pytest.raises(InvalidInputError, match="device and dtype"):
        osediff.restore_batch(_batch(64, 64).double())


def test_the_core_refuses_options_the_restorer_does_not_have(osediff):
    with pytest.raises(InvalidInputError, match=r"Unknown options for the osediff restorer: \['steps'\]"):
        osediff.restore_batch(_batch(64, 64), steps=4)


def test_the_core_wants_one_prompt_per_image(osediff):
    with pytest.raises(InvalidInputError, match="list of 2 texts"):
        osediff.restore_batch(_batch(64, 64, batch=2), prompts=["only one"])


def test_capabilities_are_enforced_on_a_restorer_that_cannot_tile_or_take_features():
    identity = IdentityRestorer()
    x = torch.rand(1, 3, 5, 7)
    assert identity.restore_batch(x, strength=0.5) is x and identity.calls[-1]["strength"] == 0.5
    with pytest.raises(ConfigError, match="cannot tile"):
        identity.restore_batch(x, tiling=TilingConfig(mode="always"))
    with pytest.raises(ConfigError, match="takes no image features"):
        identity.restore_batch(x, image_features=torch.zeros(1, 4, 512))


def test_loading_in_a_dtype_the_restorer_does_not_support_is_refused():
    with RESTORERS.isolated():
        register_restorer("identity", IdentityRestorer)
        with pytest.raises(ConfigError, match="does not run correctly in torch.float16"):
            load_restorer("identity", dtype="fp16")
        assert load_restorer("identity", dtype=torch.bfloat16).loaded_with["dtype"] == torch.bfloat16


def test_restorers_recognise_their_own_checkpoint_files(osediff):
    assert identify_restorer(OSEDIFF_GOLDEN_PKL) == "osediff"
    assert identify_restorer(golden_set("s3diff") / "s3diff.pkl") == "s3diff"
    recognised = load_restorer(None, weights=OSEDIFF_GOLDEN_PKL, base_model=TINY_SD21, device="cpu")
    assert type(recognised) is type(osediff) and recognised.load_spec[0] == "osediff"


def test_a_checkpoint_no_restorer_recognises_gets_a_clear_error(tmp_path):
    path = tmp_path / "mystery.safetensors"
    save_file({"some.weight": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointMismatchError, match="none of .*osediff.* recognise it"):
        identify_restorer(path)
    with pytest.raises(InvalidInputError, match="pass weights="):
        load_restorer(None)
