"""`elqproj bench` and `elqproj.benchmarking.benchmark_restore`: rows, keys, stages, errors (no timing limits);
benchmarks/compare_official.py's parts and its exit when the official code cannot be had."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from elqproj import InvalidInputError, Projector, RestorationPipeline
from elqproj.benchmarking import benchmark_restore, format_table, synthetic_images
from elqproj.cli import main
from tests.conftest import OSEDIFF_GOLDEN_PKL, TINY_SD21

STAGES = ["prompt_s", "project_s", "restore_s"]
ROW_KEYS = {"projector", "size", "process_side", "output_side", "batch", "device", "device_name", "dtype", "backend",
            "prompt", "lfo", "lfo_passes", "warmup", "repeats", *STAGES, "total_s", "wall_s", "images_per_s",
            "peak_rss_gib"}


def _bench(tmp_path, *extra: str) -> list[str]:
    return ["bench", "--backend", "osediff", "--backend-weights", str(OSEDIFF_GOLDEN_PKL), "--base-model",
            str(TINY_SD21), "--prompt", "a photo of a cat", "--device", "cpu", "--process-size", "0", "--seed", "0",
            "--warmup", "0", "--repeats", "1", "--json", str(tmp_path / "bench.json"), "-q", *extra]


@pytest.fixture
def tiny_pipeline():
    return RestorationPipeline.from_components(projector=Projector.from_base(TINY_SD21, device="cpu"),
                                               restorer="osediff", restorer_options={"weights": OSEDIFF_GOLDEN_PKL})


def test_bench_writes_one_row_per_size_with_positive_times(tmp_path, capsys):
    assert main(_bench(tmp_path, "--sizes", "64", "72")) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert [r["size"] for r in rows] == [64, 72] and [r["process_side"] for r in rows] == [64, 72]
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["backend"] == "osediff" and row["device"] == "cpu" and row["dtype"] == "float32"
        assert row["lfo"] == 0 and row["lfo_passes"] == 0 and row["batch"] == 1 and row["output_side"] == row["size"]
        assert all(row[k] > 0 for k in (*STAGES, "total_s", "wall_s", "images_per_s", "peak_rss_gib"))
        assert sum(row[k] for k in STAGES) <= row["total_s"]
    out = capsys.readouterr().out
    assert "untrained" in out and "peak RSS" in out and len([line for line in out.splitlines()
                                                            if line.lstrip().startswith(("64 ", "72 "))]) == 2


def test_bench_times_a_saved_projector(tmp_path, projector_dir, capsys):
    assert main(_bench(tmp_path, "--sizes", "64", "--projector", str(projector_dir))) == 0
    (row,) = json.loads((tmp_path / "bench.json").read_text())
    assert row["projector"] == str(projector_dir) and "untrained" not in capsys.readouterr().out


def test_bench_lfo_one_runs_one_refinement_pass_even_with_a_fixed_prompt(tmp_path):
    """The pipeline skips a pass that would repeat the previous prompt; bench numbers the fixed text per
    pass so that the pass asked for is timed."""
    assert main(_bench(tmp_path, "--sizes", "64", "--lfo", "1")) == 0
    (row,) = json.loads((tmp_path / "bench.json").read_text())
    assert row["lfo"] == 1 and row["lfo_passes"] == 1 and row["lfo_s"] > 0
    assert "numbered per LFO pass" in row["prompt"]
    assert sum(row[k] for k in (*STAGES, "lfo_s")) <= row["total_s"]


def test_bench_size_below_the_model_minimum_is_an_error(tmp_path, capsys):
    assert main(_bench(tmp_path, "--sizes", "32")) == 2
    err = capsys.readouterr().err
    assert "Size 32" in err and "64 px" in err and not (tmp_path / "bench.json").exists()


def test_bench_zero_repeats_is_an_error(tmp_path, capsys):
    assert main(_bench(tmp_path, "--sizes", "64", "--repeats", "0")) == 2
    assert "repeats must be an integer >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("option", [{"warmup": -1}, {"repeats": 0}, {"batch": 0}, {"sizes": []}, {"sizes": [0]}])
def test_benchmark_restore_rejects_bad_settings(tiny_pipeline, option):
    settings = {"sizes": [64], "warmup": 0, "repeats": 1, "process_size": 0, **option}
    with pytest.raises(InvalidInputError):
        benchmark_restore(tiny_pipeline, **settings)


def test_benchmark_restore_from_python_with_a_batch(tiny_pipeline):
    rows = benchmark_restore(tiny_pipeline, sizes=[64], batch=2, prompt="a cat", warmup=1, repeats=2,
                             process_size=80)
    (row,) = rows
    assert row["batch"] == 2 and row["repeats"] == 2 and row["prompt"] == "fixed text"
    assert row["size"] == 64 and row["process_side"] == 80 and row["output_side"] == 80  # enlarged to process_size
    assert row["images_per_s"] == pytest.approx(2 / row["wall_s"])
    assert set(format_table(rows).splitlines()[0].split()) >= {"size", "project", "restore", "wall", "img/s"}


def test_a_size_out_of_memory_gets_an_error_row_and_later_sizes_are_measured(tiny_pipeline, monkeypatch):
    real_restore_batch = tiny_pipeline.restorer.restore_batch

    def restore_batch(lq, **kwargs):
        if lq.shape[-1] == 72:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_restore_batch(lq, **kwargs)

    monkeypatch.setattr(tiny_pipeline.restorer, "restore_batch", restore_batch)
    rows = benchmark_restore(tiny_pipeline, sizes=[72, 64], warmup=0, repeats=1, process_size=0)
    assert rows[0]["size"] == 72 and rows[0]["error"] == "out of memory" and "wall_s" not in rows[0]
    assert rows[1]["size"] == 64 and "error" not in rows[1] and rows[1]["wall_s"] > 0
    lines = format_table(rows).splitlines()
    assert lines[1].endswith("out of memory") and "n/a" in lines[1] and "n/a" not in lines[2]


def test_synthetic_images_are_seeded_smooth_and_in_range():
    a, b = synthetic_images(32, batch=2, seed=3), synthetic_images(32, batch=2, seed=3)
    assert a.shape == (2, 3, 32, 32) and a.equal(b) and not a.equal(synthetic_images(32, batch=2, seed=4))
    assert a.min() >= 0 and a.max() <= 1
    assert (a[..., 1:] - a[..., :-1]).abs().mean() < 0.1  # smooth: neighbours differ far less than noise (~0.33)


def test_bench_says_when_a_size_ran_at_the_process_size_instead(tmp_path, capsys):
    assert main(_bench(tmp_path, "--sizes", "64", "128", "--process-size", "128")) == 0
    out = capsys.readouterr().out
    assert "note: size(s) 64 ran at --process-size 128 px" in out
    assert [row["process_side"] for row in json.loads((tmp_path / "bench.json").read_text())] == [128, 128]


@pytest.fixture
def compare_official(monkeypatch):
    """benchmarks/compare_official.py as a module (it imports its helper from its own folder)."""
    import importlib

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    return importlib.import_module("compare_official")


def test_compare_official_has_an_osediff_part_and_keeps_degradations_the_default(compare_official):
    args = compare_official.parse_arguments(["osediff", "--sizes", "256", "512", "--rounds", "10"])
    assert args.part == "osediff" and args.sizes == [256, 512] and args.rounds == 10 and args.threads == 2
    assert args.official_dir is None and "ours" in args.variants
    old = compare_official.parse_arguments(["--rounds", "3", "--batch-sizes", "1"])
    assert old.part == "degradations" and old.rounds == 3 and old.batch_sizes == [1]


def test_compare_official_osediff_exits_2_saying_why_when_the_official_code_cannot_be_had(
        compare_official, tmp_path, monkeypatch, capsys):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(compare_official.official_osediff.urllib.request, "urlopen", offline)
    options = ["--cache-dir", str(tmp_path / "cache"), "--weights-dir", str(tmp_path / "weights")]
    assert compare_official.main(["osediff", *options]) == 2
    err = capsys.readouterr().err
    assert "Could not download the official OSEDiff code" in err and "no network" in err and "--official-dir" in err
    assert compare_official.main(["osediff", *options, "--official-dir", str(tmp_path)]) == 2
    assert "holds no osediff.py" in capsys.readouterr().err
    assert not (tmp_path / "weights").exists()  # nothing is built before the official code is there
