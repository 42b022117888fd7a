"""Restoring an archive: sharded over processes, per-image seeds, batches by size, a manifest, resume."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from elqproj import RestorationPipeline
from elqproj.archive import distributed_state, restore_folder
from elqproj.cli import main
from elqproj.errors import ConfigError, InvalidInputError
from elqproj.manifest import MANIFEST_NAME, ManifestRecord, ManifestWriter, latest_records, merge_manifest, part_path
from elqproj.seeding import file_seed
from tests.conftest import OSEDIFF_GOLDEN_PKL, REPO_ROOT, TINY_SD21
from tests.identity_restorer import IdentityRestorer


def _write(path, w=40, h=32, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _archive(folder, sizes=((40, 32),) * 6):
    return [_write(folder / f"img{i}.png", w, h, seed=i) for i, (w, h) in enumerate(sizes)]


def _model_args(projector_dir):
    return ["--projector", str(projector_dir), "--backend", "osediff", "--backend-weights", str(OSEDIFF_GOLDEN_PKL),
            "--base-model", str(TINY_SD21), "--seed", "0", "--device", "cpu", "--process-size", "64", "--lfo", "1",
            "-q"]


class _Counting:
    """A pipeline stand-in that counts calls and can stop the run (like a kill) after ``stop_after`` calls."""

    def __init__(self, pipeline, stop_after=None):
        self.pipeline, self.stop_after, self.calls = pipeline, stop_after, []

    def __getattr__(self, name):
        return getattr(self.pipeline, name)

    def __call__(self, images, **kwargs):
        if self.stop_after is not None and len(self.calls) == self.stop_after:
            raise KeyboardInterrupt  # not an image's failure: it ends the process, as a kill would
        self.calls.append((tuple(images.shape), kwargs["seed"]))
        return self.pipeline(images, **kwargs)


@pytest.fixture
def identity_pipeline():
    return RestorationPipeline(IdentityRestorer())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------ seeds


def test_per_image_seeds_give_each_image_of_a_batch_its_own_single_image_result(projector_dir):
    pipe = RestorationPipeline.from_components(projector=projector_dir, restorer="osediff",
                                               restorer_options={"weights": OSEDIFF_GOLDEN_PKL}, device="cpu")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    batch = pipe(images, seed=[11, 12], lfo=1, process_size=0, progress=False)
    for i, seed in enumerate((11, 12)):
        alone = pipe(images[i:i + 1], seed=seed, lfo=1, process_size=0, progress=False)
        # same draws; only float32 summation order differs between a batch of 2 and of 1 (2.3e-5 measured)
        torch.testing.assert_close(batch.image[i:i + 1], alone.image, atol=1e-4, rtol=0)
        torch.testing.assert_close(batch.lq[i:i + 1], alone.lq, atol=1e-4, rtol=0)
    shared = pipe(images, seed=11, lfo=1, process_size=0, progress=False)
    assert (shared.image[1] - batch.image[1]).abs().max() > 1e-3  # the second image really drew its own noise


def test_a_restorer_without_per_image_seeds_runs_such_a_batch_image_by_image():
    restorer = IdentityRestorer()
    pipe = RestorationPipeline(restorer)
    pipe(torch.rand(2, 3, 8, 8), seed=[5, 7], prompt=["a cat", "a dog"], process_size=0, progress=False)
    assert [(c["seed"], c["prompts"], c["lq"].shape[0]) for c in restorer.calls] == [(5, ["a cat"], 1), (7, ["a dog"], 1)]


def test_a_seed_list_must_hold_one_integer_per_image(identity_pipeline):
    with pytest.raises(InvalidInputError, match="one integer seed per image"):
        identity_pipeline(torch.rand(2, 3, 8, 8), seed=[1], process_size=0, progress=False)
    with pytest.raises(InvalidInputError, match="one integer seed per image"):
        identity_pipeline(torch.rand(2, 3, 8, 8), seed=[1, None], process_size=0, progress=False)


def test_each_image_is_restored_with_the_seed_derived_from_the_run_seed_and_its_name(tmp_path, identity_pipeline):
    paths = _archive(tmp_path / "in", [(40, 32)] * 3)
    counting = _Counting(identity_pipeline)
    report = restore_folder(counting, tmp_path / "in", tmp_path / "out", seed=3, process_size=0, progress=False)
    expected = sorted(file_seed(3, p) for p in paths)
    assert sorted(seed[0] for _, seed in counting.calls) == expected
    assert sorted(r.seed for r in report.done) == expected


# --------------------------------------------------------------- batching


def test_files_of_one_size_are_batched_together_and_others_alone(tmp_path, identity_pipeline):
    _archive(tmp_path / "in", [(40, 32), (40, 32), (24, 16), (40, 32), (24, 16)])
    counting = _Counting(identity_pipeline)
    report = restore_folder(counting, tmp_path / "in", tmp_path / "out", batch_size=2, num_workers=1,
                            process_size=0, progress=False)
    assert sorted(shape[0] for shape, _ in counting.calls) == [1, 2, 2]
    assert sorted(tuple(shape[-2:]) for shape, _ in counting.calls) == [(16, 24), (32, 40), (32, 40)]
    assert len(report.done) == 5
    for i in range(5):  # g is the identity: every output is its own input, not its batch neighbour's
        original = np.asarray(Image.open(tmp_path / "in" / f"img{i}.png"))
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / f"img{i}.png")), original)


def test_batched_results_match_unbatched_ones_within_one_grey_level(tmp_path, projector_dir):
    _archive(tmp_path / "in", [(40, 32)] * 4)
    common = [str(tmp_path / "in"), *_model_args(projector_dir)]
    assert main(["restore", "-o", str(tmp_path / "one"), *common]) == 0
    assert main(["restore", "-o", str(tmp_path / "two"), "--batch-size", "2", *common]) == 0
    for i in range(4):
        one = np.asarray(Image.open(tmp_path / "one" / f"img{i}.png"), dtype=np.int16)
        two = np.asarray(Image.open(tmp_path / "two" / f"img{i}.png"), dtype=np.int16)
        assert np.abs(one - two).max() <= 1


# ---------------------------------------------------------- failures, manifest


def test_a_corrupt_file_is_retried_once_recorded_as_failed_and_the_others_are_written(tmp_path, identity_pipeline):
    _archive(tmp_path / "in", [(40, 32)] * 3)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut here")
    failed = []
    report = restore_folder(identity_pipeline, tmp_path / "in", tmp_path / "out", batch_size=2, process_size=0,
                            progress=False, on_error=lambda path, reason: failed.append(path.name))
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["img0.png", "img1.png", "img2.png"]
    (bad,) = report.failed
    assert bad.input.endswith("broken.png") and bad.attempts == 2 and "ImageDecodeError" in bad.error
    assert failed == ["broken.png"]
    lines = [json.loads(line) for line in (tmp_path / "out" / MANIFEST_NAME).read_text().splitlines()]
    assert sorted((os.path.basename(line["input"]), line["status"]) for line in lines) == [
        ("broken.png", "failed"), ("img0.png", "done"), ("img1.png", "done"), ("img2.png", "done")]


def test_a_batch_that_fails_is_retried_image_by_image(tmp_path, identity_pipeline):
    _archive(tmp_path / "in", [(40, 32)] * 2)

    class FailsOnBatches(_Counting):
        def __call__(self, images, **kwargs):
            if images.shape[0] > 1:
                raise RuntimeError("out of memory")
            return super().__call__(images, **kwargs)

    counting = FailsOnBatches(identity_pipeline)
    report = restore_folder(counting, tmp_path / "in", tmp_path / "out", batch_size=2, process_size=0, progress=False)
    assert len(counting.calls) == 2 and [r.attempts for r in report.done] == [2, 2]


def test_the_manifest_records_seed_prompts_timings_and_device(tmp_path, projector_dir):
    _archive(tmp_path / "in", [(40, 32)])
    assert main(["restore", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *_model_args(projector_dir),
                 "--prompt", "a house"]) == 0
    (record,) = latest_records(tmp_path / "out" / MANIFEST_NAME).values()
    assert record.status == "done" and record.seed == file_seed(0, "img0.png") and record.device == "cpu"
    assert record.prompts == ["a house"] * 2 and record.lfo_passes == 0 and "prompts of pass 1" in record.lfo_stop
    assert {"prompt", "project", "restore", "total"} <= set(record.timings) and record.batch_size == 1


def test_manifest_parts_merge_newest_line_first_and_a_cut_line_is_ignored(tmp_path):
    manifest = tmp_path / MANIFEST_NAME
    old = ManifestRecord.now(input="a.png", output="o/a.png", status="failed", error="boom", process=1)
    new = ManifestRecord.now(input="a.png", output="o/a.png", status="done", process=0)
    other = ManifestRecord.now(input="b.png", output="o/b.png", status="done", process=1)
    for process, records in ((1, [old, other]), (0, [new])):
        writer = ManifestWriter(manifest, process)
        for record in records:
            writer.write(record)
        writer.close()
    with part_path(manifest, 1).open("a") as part:
        part.write('{"input": "c.png", "outp')  # the line a kill cut short
    merged = merge_manifest(manifest)
    assert {key: r.status for key, r in merged.items()} == {"a.png": "done", "b.png": "done"}
    assert [json.loads(line)["input"] for line in manifest.read_text().splitlines()] == ["a.png", "b.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME]


# ----------------------------------------------------------------- resume


def test_a_run_stopped_midway_and_resumed_restores_only_what_is_missing(tmp_path, identity_pipeline):
    _archive(tmp_path / "in", [(40, 32)] * 6)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        restore_folder(_Counting(identity_pipeline, stop_after=4), tmp_path / "in", out, seed=0, process_size=0,
                       progress=False)
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert len(written) == 4 and not (out / MANIFEST_NAME).exists()  # the parts were never merged
    (out / "img5.png").write_bytes(b"an output the manifest does not vouch for")
    resumed = _Counting(identity_pipeline)
    report = restore_folder(resumed, tmp_path / "in", out, seed=0, process_size=0, progress=False, resume=True)
    assert len(resumed.calls) == 2 and len(report.skipped) == 4 and len(report.done) == 6
    assert all(out.joinpath(name).stat().st_mtime_ns == mtime for name, mtime in written.items())
    assert Image.open(out / "img5.png").size == (40, 32)
    assert len((out / MANIFEST_NAME).read_text().splitlines()) == 6


def test_resume_from_the_command_line_needs_a_manifest(tmp_path, capsys):
    src = _write(tmp_path / "a.png")
    assert main(["restore", str(src), "-o", str(tmp_path / "o.png"), "--resume"]) == 2
    assert "--manifest" in capsys.readouterr().err


def test_a_resumed_run_with_nothing_left_loads_no_model(tmp_path, identity_pipeline, capsys):
    _archive(tmp_path / "in", [(40, 32)] * 2)
    restore_folder(identity_pipeline, tmp_path / "in", tmp_path / "out", process_size=0, progress=False)
    # --backend-weights points nowhere: loading g would fail, so exit 0 proves nothing was loaded
    assert main(["restore", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--resume",
                 "--backend-weights", str(tmp_path / "missing.pkl"), "-q"]) == 0


# ----------------------------------------------------------------- refusals


def test_two_inputs_with_one_output_name_are_refused_before_any_work(tmp_path, identity_pipeline):
    _write(tmp_path / "in" / "photo.png")
    _write(tmp_path / "in" / "photo.jpg")
    with pytest.raises(InvalidInputError, match="would both be written to"):
        restore_folder(identity_pipeline, tmp_path / "in", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_processes_launched_without_one_process_group_are_refused(monkeypatch):
    distributed_state("cpu")  # this test process: one process
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="did not form one process group"):
        distributed_state("cpu")


# ------------------------------------------------------------ two processes


@pytest.mark.slow
def test_two_processes_write_every_output_once_with_the_bytes_of_one_process(tmp_path, projector_dir):
    _archive(tmp_path / "in", [(40, 32), (40, 32), (24, 24), (40, 32), (24, 24), (40, 32)])
    model = _model_args(projector_dir)
    assert main(["restore", str(tmp_path / "in"), "-o", str(tmp_path / "single"), *model]) == 0
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()),
               "-m", "elqproj", "restore", str(tmp_path / "in"), "-o", str(tmp_path / "sharded"), *model]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    records = latest_records(tmp_path / "sharded" / MANIFEST_NAME)
    assert len(records) == 6 and {r.process for r in records.values()} == {0, 1}
    assert all(r.status == "done" and r.attempts == 1 for r in records.values())
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == sorted(
        [f"img{i}.png" for i in range(6)] + [MANIFEST_NAME])
    for i in range(6):
        single = (tmp_path / "single" / f"img{i}.png").read_bytes()
        assert (tmp_path / "sharded" / f"img{i}.png").read_bytes() == single
