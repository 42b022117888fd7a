"""The `elqproj` command line: restore (files, folders, globs, skip-existing, errors) and info."""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from elqproj.cli import main
from tests.conftest import OSEDIFF_GOLDEN_PKL, TINY_SD21, golden_set


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
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "manifest.jsonl"]
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


def test_info_says_which_weights_are_cached(capsys):
    assert main(["info"]) == 0
    weights = capsys.readouterr().out.split("\nweights")[1]
    assert "sd21-base" in weights and "dape       not cached" in weights  # the tests' caches hold no DAPE


def test_info_lists_backends_with_licences(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "osediff" in text and "Apache-2.0" in text and "torch" in text
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["backends"]["osediff"]["scale"] == 4 and "diffusers" in data["versions"]


def test_info_says_which_restorers_tile_and_what_sizes_they_take(capsys):
    assert main(["info"]) == 0
    backends = capsys.readouterr().out.split("\nweights")[0]  # the section before the weights table
    lines = {line.split()[0]: line for line in backends.splitlines() if line.startswith("  ")
             and line.split()[0] in ("osediff", "s3diff", "seesr")}
    assert "sides a multiple of 64 px" in lines["s3diff"] and "sides a multiple of 8 px" in lines["osediff"]
    assert all(", tiling," in line for line in lines.values())  # the three built-ins all tile


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
        cls.options = kwargs
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


@pytest.mark.parametrize("with_projector", [False, True], ids=["g-alone", "with-projector"])
def test_a_named_extractor_loads_once_per_run(tmp_path, projector_dir, counting_tagger, with_projector):
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        _write(tmp_path / "in" / f"{name}.png", seed=seed)
    args = ["restore", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--backend-weights", str(OSEDIFF_GOLDEN_PKL),
            "--base-model", str(TINY_SD21), "--prompt-extractor", "counting-test", "--prompt-weights", "w.pth",
            "--device", "cpu", "--process-size", "64", "--lfo", "1" if with_projector else "0", "-q"]
    if with_projector:
        args += ["--projector", str(projector_dir)]
    assert main(args) == 0
    assert counting_tagger.loads == 1 and len(list((tmp_path / "out").glob("*.png"))) == 3


def test_prompt_weights_need_an_extractor_name(tmp_path, capsys):
    src = _write(tmp_path / "in.png")
    assert main(["restore", str(src), "-o", str(tmp_path / "o.png"), "--prompt", "a dog", "--prompt-weights",
                 "w.pth", "--backend-weights", str(OSEDIFF_GOLDEN_PKL), "--base-model", str(TINY_SD21),
                 "--device", "cpu"]) == 2
    assert "--prompt-weights and --prompt-option need --prompt-extractor" in capsys.readouterr().err


class _FeatureTagger:
    """A tagger with SeeSR-style image features: fixed tags, (B, 16, 512) features, calls counted."""

    calls = 0

    def __new__(cls, weights=None, *, device=None, dtype=None, revision=None, **kwargs):
        from elqproj.prompts import PromptExtractor, PromptResult

        class Tagger(PromptExtractor):
            name = "features-test"

            def extract(self, images):
                cls.calls += 1
                batch = images.shape[0] if hasattr(images, "shape") else len(images)
                features = torch.randn(batch, 16, 512, generator=torch.Generator().manual_seed(0))
                return PromptResult(texts=["bird, tree"] * batch, image_features=features)

        return Tagger()


@pytest.fixture
def seesr_base_cache(tmp_path_factory, tiny_sd21, monkeypatch):
    """An offline Hub cache serving the tiny fixture as SeeSR's base (SD-2-base) and S3Diff's (SD-Turbo)."""
    import huggingface_hub.constants as constants

    from tests.conftest import populate_hf_cache

    cache = tmp_path_factory.mktemp("hub")
    files = {str(p.relative_to(tiny_sd21)): p for p in tiny_sd21.rglob("*") if p.is_file()}
    for repo in ("stabilityai/stable-diffusion-2-base", "stabilityai/sd-turbo"):
        populate_hf_cache(cache, repo, files)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def feature_tagger():
    from elqproj.prompts import register_prompt_extractor
    from elqproj.prompts.base import PROMPT_EXTRACTORS

    with PROMPT_EXTRACTORS.isolated():
        _FeatureTagger.calls = 0
        register_prompt_extractor("features-test", _FeatureTagger, overwrite=True)
        yield _FeatureTagger


@pytest.mark.parametrize("with_projector", [False, True], ids=["g-alone", "with-projector"])
def test_seesr_restores_from_the_command_line(tmp_path, projector_dir, seesr_base_cache, feature_tagger,
                                              with_projector):
    src = _write(tmp_path / "in.png", 24, 16)
    args = ["restore", str(src), "-o", str(tmp_path / "o.png"), "--backend", "seesr", "--backend-weights",
            str(golden_set("seesr") / "seesr"), "--prompt-extractor", "features-test", "--restore-option", "steps=2",
            "--tiling", "always", "--tile-size", "48", "--seed", "0", "--device", "cpu", "--process-size", "64", "-q"]
    if with_projector:
        args += ["--projector", str(projector_dir)]
    assert main(args) == 0
    assert Image.open(tmp_path / "o.png").size == (96, 64)
    assert feature_tagger.calls == 2  # Y on the input (for f), and on g's input (tags and features for g)


@pytest.mark.parametrize("with_projector", [False, True], ids=["g-alone", "with-projector"])
def test_s3diff_restores_from_the_command_line(tmp_path, projector_dir, seesr_base_cache, with_projector):
    src = _write(tmp_path / "in.png", 24, 16)
    s3diff = golden_set("s3diff")
    args = ["restore", str(src), "-o", str(tmp_path / "o.png"), "--backend", "s3diff", "--backend-weights",
            str(s3diff / "s3diff.pkl"), "--backend-option", f"de_net={s3diff / 'de_net.pth'}", "--seed", "0",
            "--device", "cpu", "--process-size", "64", "-q"]
    if with_projector:
        args += ["--projector", str(projector_dir)]
    assert main(args) == 0
    assert Image.open(tmp_path / "o.png").size == (96, 64)


def test_a_malformed_key_value_option_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit):
        main(["restore", "x.png", "-o", "y.png", "--backend-option", "no-equals-sign"])


def test_restore_never_overwrites_its_input(tmp_path, projector_dir, capsys):
    src = _write(tmp_path / "same.png")
    before = src.read_bytes()
    assert main(["restore", str(src), "-o", str(src), *_common(projector_dir)]) == 2  # refused before any work
    assert "is an input" in capsys.readouterr().err and src.read_bytes() == before


def test_an_output_below_a_file_is_a_clear_error_not_a_traceback(tmp_path, projector_dir, capsys):
    src = _write(tmp_path / "in.png")
    (tmp_path / "a_file").write_text("not a folder")
    assert main(["restore", str(src), "-o", str(tmp_path / "a_file" / "out.png"), *_common(projector_dir)]) == 1
    assert "a_file' is a file, not a folder" in capsys.readouterr().err


def test_degrade_goes_through_a_folder_past_a_corrupt_file_and_reports_it(tmp_path, capsys):
    _write(tmp_path / "in" / "a.png", 64, 64)
    (tmp_path / "in" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _write(tmp_path / "in" / "c.png", 64, 64, seed=1)
    assert main(["degrade", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--preset", "realesrgan", "-q"]) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png"]
    err = capsys.readouterr().err
    assert "1 of 3 file(s) failed" in err and "b.png" in err


def test_degrade_never_overwrites_its_input(tmp_path, capsys):
    src = _write(tmp_path / "a.png", 64, 64)
    before = src.read_bytes()
    assert main(["degrade", str(src), "-o", str(tmp_path), "-q"]) == 1
    assert "is the input itself" in capsys.readouterr().err and src.read_bytes() == before


def test_tag_goes_through_a_folder_past_a_corrupt_file_and_reports_it(tmp_path, capsys, counting_tagger):
    _write(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"GIF89a broken")
    _write(tmp_path / "c.png", seed=1)
    assert main(["tag", str(tmp_path), "--extractor", "counting-test", "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert [Path(line.split("\t")[0]).name for line in captured.out.splitlines()] == ["a.png", "c.png"]
    assert "1 of 3 file(s) failed" in captured.err


def test_tag_with_ram_offline_names_the_tag_list_option_and_takes_it(tmp_path, capsys):
    ram = golden_set("ram")
    _write(tmp_path / "a.png")
    base = ["tag", str(tmp_path / "a.png"), "--extractor", "ram", "--weights", str(ram / "ram_tiny.pth"), "--device", "cpu"]
    assert main(base) == 2
    assert "--tag-list FILE" in capsys.readouterr().err
    tags = ram / "tags"
    assert main([*base, "--tag-list", str(tags / "ram_tag_list.txt"),
                 "--tag-thresholds", str(tags / "ram_tag_list_threshold.txt")]) == 0
    assert capsys.readouterr().out.startswith(str(tmp_path / "a.png"))


def test_prompt_options_reach_the_extractor(tmp_path, counting_tagger):
    src = _write(tmp_path / "in.png")
    assert main(["restore", str(src), "-o", str(tmp_path / "o.png"), "--backend-weights", str(OSEDIFF_GOLDEN_PKL),
                 "--base-model", str(TINY_SD21), "--prompt-extractor", "counting-test", "--prompt-option",
                 "tag_list=tags.txt", "--prompt-option", "threshold=0.6", "--device", "cpu", "--process-size", "64",
                 "-q"]) == 0
    assert counting_tagger.options == {"tag_list": "tags.txt", "threshold": 0.6}


@pytest.mark.parametrize("quiet", [False, True], ids=["progress", "quiet"])
def test_restore_shows_the_running_stage_unless_quiet(tmp_path, projector_dir, capsys, quiet):
    src = _write(tmp_path / "in.png")
    args = ["restore", str(src), "-o", str(tmp_path / "out.png"), *[a for a in _common(projector_dir) if a != "-q"]]
    assert main(args + (["-q"] if quiet else [])) == 0
    err = capsys.readouterr().err
    assert all((stage in err) != quiet for stage in ("prompt", "project", "restore"))


def test_an_option_the_restorer_lacks_stops_the_run_once_before_any_file(tmp_path, projector_dir, capsys):
    _write(tmp_path / "in" / "a.png")
    _write(tmp_path / "in" / "b.png", seed=1)
    code = main(["restore", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *_common(projector_dir),
                 "--restore-option", "steps=3"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("Unknown options for the osediff restorer: ['steps']") == 1
    assert not (tmp_path / "out").exists()


def test_info_lists_the_restorers_without_importing_the_model_libraries():
    """`elqproj info` reads capabilities and versions only: importing diffusers, transformers or peft took
    most of its several seconds. A fresh interpreter, so that other tests' imports do not count."""
    code = ("import sys, contextlib, io\nfrom elqproj.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    assert main(['info']) == 0\n"
            "print(sorted(m for m in ('diffusers', 'transformers', 'peft', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
