"""``elqproj degrade``: the CLI front of degrade_files."""

from __future__ import annotations

import json

import torch
from PIL import Image

from elqproj.cli import main

from .conftest import photo


def _write_photo(folder, name: str) -> None:
    array = (photo(name, 128)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(array).save(folder / f"{name}.png")


def test_degrade_writes_images_and_params(tmp_path):
    _write_photo(tmp_path, "astronaut")
    out = tmp_path / "out"
    args = ["degrade", str(tmp_path / "astronaut.png"), "-o", str(out), "--preset", "elq", "--seed", "0"]
    assert main([*args, "--save-params", "-q"]) == 0
    assert Image.open(out / "astronaut.png").size == (128, 128)
    assert json.loads((out / "astronaut.json").read_text())["config"]["name"] == "elq"


def test_degrade_with_the_same_seed_is_reproducible(tmp_path):
    _write_photo(tmp_path, "chelsea")
    for run in ("a", "b"):
        args = ["degrade", str(tmp_path / "*.png"), "-o", str(tmp_path / run), "--preset", "osediff", "--seed", "3"]
        assert main([*args, "-q"]) == 0
    assert (tmp_path / "a" / "chelsea.png").read_bytes() == (tmp_path / "b" / "chelsea.png").read_bytes()


def test_degrade_scale_sets_the_lq_size(tmp_path):
    _write_photo(tmp_path, "chelsea")
    args = ["degrade", str(tmp_path), "-o", str(tmp_path / "out"), "--preset", "realesrgan", "--scale", "2"]
    assert main([*args, "-q"]) == 0
    assert Image.open(tmp_path / "out" / "chelsea.png").size == (64, 64)


def test_an_unknown_preset_is_a_clear_error(tmp_path, capsys):
    _write_photo(tmp_path, "chelsea")
    assert main(["degrade", str(tmp_path), "-o", str(tmp_path / "out"), "--preset", "extreme", "-q"]) == 2
    assert "unknown degradation preset 'extreme'" in capsys.readouterr().err
