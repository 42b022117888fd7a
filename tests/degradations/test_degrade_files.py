"""degrade_files: folders of image files to degraded PNGs, with reproducible params sidecars."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from elqproj.degradations import DegradationParams, DegradationPipeline, degrade_files
from elqproj.errors import InvalidInputError

from .conftest import photo


@pytest.fixture()
def folder(tmp_path):
    """Two 128x128 RGB photos as PNG and JPEG files."""
    source = tmp_path / "in"
    source.mkdir()
    for name, suffix in (("astronaut", ".png"), ("chelsea", ".jpg")):
        array = (photo(name, 128)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(array).save(source / f"{name}{suffix}")
    return source


def _read(path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255).permute(2, 0, 1)[None]


def test_every_image_gets_a_png_at_the_preset_output_size(folder, tmp_path):
    written = degrade_files(folder, tmp_path / "out", config="realesrgan", seed=0, progress=False)
    assert [path.name for path in written] == ["astronaut.png", "chelsea.png"]
    assert all(Image.open(path).size == (32, 32) and Image.open(path).mode == "RGB" for path in written)


def test_scale_overrides_the_final_down_scale(folder, tmp_path):
    written = degrade_files(folder / "astronaut.png", tmp_path / "out", config="realesrgan", scale=2, progress=False)
    assert Image.open(written[0]).size == (64, 64)


def test_saved_params_reproduce_the_written_image(folder, tmp_path):
    (written,) = degrade_files(
        folder / "chelsea.jpg", tmp_path / "out", config="elq", seed=4, save_params=True, progress=False
    )
    record = json.loads(written.with_suffix(".json").read_text())
    pipeline = DegradationPipeline(record["config"])
    source = _read(record["source"])
    lq = pipeline.apply(source, DegradationParams.model_validate(record["params"]))
    torch.testing.assert_close(lq, _read(written), rtol=0, atol=0)


def test_an_image_gets_the_same_degradation_alone_or_with_others(folder, tmp_path):
    together = degrade_files(folder, tmp_path / "a", seed=1, progress=False)
    alone = degrade_files(folder / "chelsea.jpg", tmp_path / "b", seed=1, progress=False)
    torch.testing.assert_close(_read(together[1]), _read(alone[0]), rtol=0, atol=0)


def test_inputs_that_would_overwrite_each_other_are_rejected(folder, tmp_path):
    (folder / "chelsea.png").write_bytes((folder / "astronaut.png").read_bytes())
    with pytest.raises(InvalidInputError, match="chelsea"):
        degrade_files(folder, tmp_path / "out", progress=False)
