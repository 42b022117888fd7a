"""Training data from the Hugging Face `datasets` library: imagefolder, save_to_disk folders, in-memory rows.

Every dataset here is built offline from the two PNGs of the ``train_images`` fixture.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from elqproj.errors import ConfigError
from elqproj.training import load_config
from elqproj.training.data import HFTripletDataset, build_train_dataset, build_validation_batch

CROP = 64


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """`datasets` writes the Arrow files of every load_dataset call into its cache: keep it per test."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")


def _config(**data):
    """A config whose only data source is ``data`` (dotted keys under ``data.``), 64-px crops."""
    overrides = {"data.crop_size": CROP, "training.num_validation_images": 1}
    return load_config(overrides=overrides | {f"data.{key}": value for key, value in data.items()})


def _imagefolder(folder: Path, **options):
    return _config(hf_dataset={"path": "imagefolder", "data_dir": str(folder), **options})


def _image_dataset(files: list[Path]) -> datasets.Dataset:
    """Rows with an ``Image`` feature (decoded to PIL on access) and a caption column."""
    rows = datasets.Dataset.from_dict({"image": [str(f) for f in files], "caption": [f.stem for f in files]})
    return rows.cast_column("image", datasets.Image())


def _assert_same_items(dataset, reference) -> None:
    assert len(dataset) == len(reference)
    for index in range(len(reference)):
        item, expected = dataset[index], reference[index]
        for key in ("elq", "lq", "hq"):
            torch.testing.assert_close(item[key], expected[key], rtol=0, atol=0)
        assert item["lq_params"] == expected["lq_params"]


def test_imagefolder_items_are_triplets_of_crops_in_the_unit_range(train_images):
    dataset = build_train_dataset(_imagefolder(train_images))
    assert isinstance(dataset, HFTripletDataset) and len(dataset) == 2
    item = dataset[1]
    for key in ("elq", "lq", "hq"):
        assert item[key].shape == (3, CROP, CROP) and item[key].dtype == torch.float32
        assert 0 <= item[key].min() and item[key].max() <= 1
    assert '"blur1"' in item["lq_params"]


def test_imagefolder_items_equal_the_folder_items_for_the_same_seed(train_images):
    # Both list the folder in sorted order, so index i is the same image, crop and degradations.
    folder = build_train_dataset(_config(train=str(train_images)))
    _assert_same_items(build_train_dataset(_imagefolder(train_images)), folder)


def test_validation_batch_from_an_imagefolder_equals_the_folder_one(train_images):
    batch = build_validation_batch(_imagefolder(train_images))
    reference = build_validation_batch(_config(train=str(train_images)))
    assert batch["hq"].shape == (1, 3, CROP, CROP)
    for key in ("elq", "lq", "hq"):
        torch.testing.assert_close(batch[key], reference[key], rtol=0, atol=0)


def test_a_saved_dataset_with_an_image_feature_is_read_back(train_images, tmp_path):
    files = sorted(train_images.glob("*.png"))
    _image_dataset(files).save_to_disk(str(tmp_path / "saved"))
    dataset = build_train_dataset(_config(hf_dataset={"path": str(tmp_path / "saved")}))
    _assert_same_items(dataset, build_train_dataset(_config(train=str(train_images))))
    assert dataset.rows.column_names == ["image"]  # the caption column is never decoded


def test_a_saved_dataset_dict_gives_the_configured_split(train_images, tmp_path):
    files = sorted(train_images.glob("*.png"))
    datasets.DatasetDict(train=_image_dataset(files), test=_image_dataset(files[1:])).save_to_disk(
        str(tmp_path / "saved"))
    dataset = build_train_dataset(_config(hf_dataset={"path": str(tmp_path / "saved"), "split": "test"}))
    assert len(dataset) == 1
    torch.testing.assert_close(dataset.load_hq(0), build_train_dataset(_config(train=str(files[1]))).load_hq(0))


def test_an_unknown_split_of_a_saved_dataset_dict_lists_the_splits(train_images, tmp_path):
    files = sorted(train_images.glob("*.png"))
    datasets.DatasetDict(train=_image_dataset(files)).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ConfigError, match=r"split 'validation'.*\['train'\]"):
        build_train_dataset(_config(hf_dataset={"path": str(tmp_path / "saved"), "split": "validation"}))


def test_an_unknown_split_of_load_dataset_lists_the_splits(train_images):
    with pytest.raises(ConfigError, match=r"split 'validation'.*\['train'\]"):
        build_train_dataset(_imagefolder(train_images, split="validation"))


def test_a_split_slice_goes_to_load_dataset(train_images):
    assert len(build_train_dataset(_imagefolder(train_images, split="train[:1]"))) == 1


def test_a_missing_image_column_lists_the_columns(train_images):
    with pytest.raises(ConfigError, match=r"'photo'.*\['image'\].*image_column"):
        build_train_dataset(_imagefolder(train_images, image_column="photo"))


def test_load_dataset_options_are_refused_for_a_saved_dataset(train_images, tmp_path):
    _image_dataset(sorted(train_images.glob("*.png"))).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ConfigError, match="data_dir"):
        build_train_dataset(_config(hf_dataset={"path": str(tmp_path / "saved"), "data_dir": "photos"}))


def test_an_uncached_hub_dataset_offline_is_a_config_error_that_says_so():
    assert datasets.config.HF_HUB_OFFLINE  # tests/conftest.py sets HF_HUB_OFFLINE=1 before any import
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE=1"):
        build_train_dataset(_config(hf_dataset={"path": "elqproj-tests/never-cached"}))


class CountingRows:
    """A ``datasets``-like table of PIL images that records which rows were read."""

    column_names = ["image"]

    def __init__(self, images: list[Image.Image]) -> None:
        self.images = images
        self.reads: list[int] = []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Image.Image]:
        self.reads.append(index)
        return {"image": self.images[index]}


def _random_photo(seed: int, height: int = 70, width: int = 90) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8))


def test_rows_are_decoded_one_item_at_a_time():
    rows = CountingRows([_random_photo(i) for i in range(5)])
    dataset = build_train_dataset(_config(hf_dataset={"path": "org/not-loaded"}), rows=rows)
    assert rows.reads == []
    dataset[3]
    assert rows.reads == [3]


def test_plain_rows_give_triplets_with_the_lq_params():
    rows = [{"image": _random_photo(i, 130, 150)} for i in range(2)]
    dataset = HFTripletDataset(rows, image_column="image", crop_size=128, return_params=True)
    assert len(dataset) == 2
    item = dataset[1]
    assert item["hq"].shape == item["lq"].shape == item["elq"].shape == (3, 128, 128)
    assert '"blur1"' in item["lq_params"]


def test_plain_rows_without_the_image_column_are_refused_at_construction():
    with pytest.raises(ConfigError, match=r"'image'.*\['picture'\]"):
        HFTripletDataset([{"picture": None}], image_column="image", crop_size=64)
