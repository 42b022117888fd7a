"""The `elqproj` command line: restore (files, folders, globs, skip-existing, errors) and info."""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from elqproj import Projector
from elqproj.cli import main
from tests.conftest import OSEDIFF_GOLDEN_PKL, TINY_SD21


def _write(path, w=40, h=32, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _common(projector_dir):
    return ["--projector", str(projector_dir), "--backend", "osediff", "--backend-weights", str(OSEDIFF_GOLDEN_PKL),
            "--base-model", str(TINY_SD21), "--seed", "0", "--device", "cpu", "--process-size", "64", "-q"]


def test_restore_one_file(tmp_path, projector_dir):
    src = _write(tmp_path / "in.png")
    assert main(["restore", str(src), "-o", str(tmp_path / "out.png"), *_common(projector_dir)]) == 0
    assert Image.open(tmp_path / "out.png").size == (80, 64)


def test_restore_folder_and_glob_with_skip_existing(tmp_path, projector_dir):
    _write(tmp_path / "in" / "a.png")
    _write(tmp_path / "in" / "b.jpg", seed=1)
    out = tmp_path / "out"
    assert main(["restore", str(tmp_path / "in"), "-o", str(out), *_common(projector_dir)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    before = (out / "a.png").stat().st_mtime_ns
    (out / "b.png").unlink()
    glob = str(tmp_path / "in" / "*.*")
    assert main(["restore", glob, "-o", str(out), "--skip-existing", *_common(projector_dir)]) == 0
    assert (out / "a.png").stat().st_mtime_ns == before and (out / "b.png").exists()


def test_backend_alone_without_projector(tmp_path):
    src = _write(tmp_path / "in.png", 16, 16)
    args = ["restore", str(src), "-o", str(tmp_path / "o.png"), "--backend-weights", str(OSEDIFF_GOLDEN_PKL),
            "--base-model", str(TINY_SD21), "--device", "cpu", "--upscale", "4", "--process-size", "64",
            "--color-fix", "wavelet", "-q"]
    assert main(args) == 0
    assert Image.open(tmp_path / "o.png").size == (64, 64)


def test_16_bit_colour_input_gives_16_bit_output(tmp_path):
    import cv2

    pixels = (np.random.default_rng(0).random((16, 16, 3)) * 65535).astype(np.uint16)
    src = tmp_path / "scan.png"
    assert cv2.imwrite(str(src), pixels)
    args = ["restore", str(src), "-o", str(tmp_path / "o.png"), "--backend-weights", str(OSEDIFF_GOLDEN_PKL),
            "--base-model", str(TINY_SD21), "--device", "cpu", "--upscale", "4", "--process-size", "64", "-q"]
    assert main(args) == 0
    out = cv2.imread(str(tmp_path / "o.png"), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint16 and out.shape == (64, 64, 3)
    assert (out % 257 != 0).any()  # 8-bit values widened to 16 bits would all be multiples of 257


def test_corrupt_input_fails_cleanly_without_partial_output(tmp_path, projector_dir, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code = main(["restore", str(bad), "-o", str(tmp_path / "out.png"), *_common(projector_dir)])
    assert code == 1 and "bad.png" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists() and list(tmp_path.glob("*.tmp*")) == []


def test_missing_input_is_a_usage_error(tmp_path, capsys):
    assert main(["restore", str(tmp_path / "nothing*.png"), "-o", str(tmp_path / "o")]) == 2
    assert "No image found" in capsys.readouterr().err


def test_bad_lfo_value_is_rejected_by_the_parser(tmp_path):
    with pytest.raises(SystemExit):
        main(["restore", "x.png", "-o", "y.png", "--lfo", "twice"])


def test_info_lists_backends_with_licences(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "osediff" in text and "Apache-2.0" in text and "torch" in text
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["backends"]["osediff"]["scale"] == 4 and "diffusers" in data["versions"]


def test_console_script_is_installed():
    """The ``elqproj`` command pip installs (entry point elqproj.cli:main) runs and reports the version."""
    from importlib.metadata import entry_points

    import elqproj

    (entry,) = [e for e in entry_points(group="console_scripts") if e.name == "elqproj"]
    assert entry.value == "elqproj.cli:main"
    script = Path(sys.executable).parent / "elqproj"
    assert script.is_file(), f"no console script at {script}: install the package (pip install -e .)"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"elqproj {elqproj.__version__}"


class _CountingTagger:
    loads = 0

    def __new__(cls, weights=None, *, device=None, dtype=None, revision=None, **kwargs):
        from elqproj.prompts import FixedPrompt

        cls.loads += 1
        return FixedPrompt(f"tags from {weights}")


@pytest.fixture
def counting_tagger():
    from elqproj.prompts import register_prompt_extractor
    from elqproj.prompts.base import PROMPT_EXTRACTORS

    with PROMPT_EXTRACTORS.isolated():  # the registration ends with the test
        _CountingTagger.loads = 0
        register_prompt_extractor("counting-test", _CountingTagger, overwrite=True)
        yield _CountingTagger


def test_tag_prints_one_prompt_per_image(tmp_path, capsys, counting_tagger):
    _write(tmp_path / "a.png")
    _write(tmp_path / "b.png", seed=1)
    assert main(["tag", str(tmp_path), "--extractor", "counting-test", "--weights", "w.pth", "--json",
                 "--device", "cpu"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(x["file"]).name for x in lines] == ["a.png", "b.png"]
    assert all(x["prompt"] == "tags from w.pth" for x in lines) and counting_tagger.loads == 1


def test_projector_loads_a_named_extractor_once(projector_dir, counting_tagger):
    projector = Projector.from_pretrained(projector_dir, device="cpu")
    first = projector.get_prompt_extractor("counting-test")
    assert projector.get_prompt_extractor("counting-test") is first and counting_tagger.loads == 1
    assert projector.get_prompt_extractor("a literal prompt")(["x"]) == ["a literal prompt"]
