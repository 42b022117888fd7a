"""DegradationTripletDataset: triplet shapes, same-HQ pairing, reproducibility, DataLoader workers."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from elqproj.degradations import DegradationParams, DegradationPipeline, DegradationTripletDataset, presets
from elqproj.errors import ConfigError, InvalidInputError

from .conftest import assert_grid_close, photo

CROP = 128


@pytest.fixture(scope="module")
def sources() -> list[torch.Tensor]:
    """Two (3, H, W) photos larger than the crop, one of them not square."""
    return [photo("astronaut", 160)[0], photo("coffee", 200)[0, :, :, :176]]


def test_items_are_three_crops_of_the_same_size_on_the_8_bit_grid(sources):
    item = DegradationTripletDataset(sources, crop_size=CROP)[0]
    assert set(item) == {"elq", "lq", "hq", "index"}
    for name in ("elq", "lq", "hq"):
        assert item[name].shape == (3, CROP, CROP) and item[name].dtype == torch.float32
        assert item[name].min() >= 0 and item[name].max() <= 1
    torch.testing.assert_close(item["lq"] * 255, (item["lq"] * 255).round(), rtol=0, atol=1e-4)


def test_lq_and_elq_are_degradations_of_the_returned_hq(sources):
    dataset = DegradationTripletDataset(sources, crop_size=CROP, return_params=True)
    item = dataset[1]
    hq = item["hq"][None]
    lq_params = DegradationParams.model_validate_json(item["lq_params"])
    elq_params = DegradationParams.model_validate_json(item["elq_params"])
    torch.testing.assert_close(DegradationPipeline(presets.OSEDIFF).apply(hq, lq_params)[0], item["lq"], rtol=0, atol=0)
    torch.testing.assert_close(DegradationPipeline(presets.ELQ).apply(hq, elq_params)[0], item["elq"], rtol=0, atol=0)


def test_an_item_is_reproducible_from_seed_and_index(sources):
    first = DegradationTripletDataset(sources, crop_size=CROP, seed=3)[1]
    again = DegradationTripletDataset(sources, crop_size=CROP, seed=3)[1]
    for name in ("elq", "lq", "hq"):
        torch.testing.assert_close(first[name], again[name], rtol=0, atol=0)


def test_another_seed_or_epoch_draws_another_item(sources):
    dataset = DegradationTripletDataset(sources, crop_size=CROP, seed=3)
    base = dataset[0]["lq"]
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0]["lq"], base)
    assert not torch.equal(DegradationTripletDataset(sources, crop_size=CROP, seed=4)[0]["lq"], base)


def test_center_crop_resizes_the_short_side_and_takes_the_middle():
    wide = torch.zeros(3, 128, 256)
    wide[:, :, 48:208] = 1.0  # bright middle band: the centre crop (64:192 before resizing) plus a margin
    item = DegradationTripletDataset([wide], crop_size=64, crop="center")[0]
    torch.testing.assert_close(item["hq"], torch.ones(3, 64, 64), rtol=0, atol=1e-5)


def test_a_folder_of_image_files_is_read(tmp_path, sources):
    for index, source in enumerate(sources):
        array = (source.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(array).save(tmp_path / f"{index}.png")
    dataset = DegradationTripletDataset(tmp_path, crop_size=CROP)
    assert len(dataset) == 2
    from_tensors = DegradationTripletDataset(sources, crop_size=CROP)[0]["hq"]
    torch.testing.assert_close(dataset[0]["hq"], from_tensors, rtol=0, atol=1e-6)


def test_dataloader_workers_give_the_same_items_as_the_main_process(sources):
    dataset = DegradationTripletDataset(sources, crop_size=CROP, seed=5)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)
    batch = next(iter(loader))
    assert batch["elq"].shape == (2, 3, CROP, CROP)
    # Workers run single-threaded: reductions may round differently, hence rare 1/255 flips.
    assert_grid_close(batch["lq"][1], dataset[1]["lq"])
    assert_grid_close(batch["elq"][0], dataset[0]["elq"])


def test_configs_that_do_not_resize_back_are_rejected(sources):
    with pytest.raises(ConfigError, match="resize_back"):
        DegradationTripletDataset(sources, lq_config=presets.REALESRGAN)


def test_an_empty_folder_is_rejected(tmp_path):
    with pytest.raises(InvalidInputError):
        DegradationTripletDataset(tmp_path)
