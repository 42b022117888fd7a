"""benchmarks/gpu_suite.sh: its plumbing, proved by --dry-run on the CPU (cases, table, JSON, budget), and its
refusal to run without a GPU. No timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"
ROW_FIELDS = {"case", "kind", "backend", "size", "dtype", "compile", "lfo", "batch", "s_per_image", "images_per_s",
              "peak_mem_gb", "peak_mem_gib", "status", "target", "meets_target", "device"}
# One case of every kind (the whole dry run takes minutes on two cores): f + g with LFO 2 and 0 and g alone
# for OSEDiff, g alone for S3Diff and SeeSR, the tiled image, the second dtype, a training step and the
# compile rows.
SUBSET = ["osediff:*:64:fp32", "osediff:*-tiled:*", "osediff:g:64:bf16", "s3diff:g:64:fp32", "seesr:g:64:fp32",
          "train:b1:ckpt-on:*", "*:compile"]


def _suite(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SUITE), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=env)


def _case_ids(*args: str) -> list[str]:
    done = _suite("--list", *args, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-suite") / "dry.json"
    done = _suite("--dry-run", "--json", str(out), "--only", *SUBSET)
    return done, out


def test_the_plan_covers_every_backend_size_dtype_lfo_tiling_training_and_compile():
    ids = _case_ids()
    for backend in ("osediff", "s3diff", "seesr"):
        for size in (512, 1024):
            for dtype in ("bf16", "fp16"):
                assert f"{backend}:g:{size}:{dtype}" in ids
            assert f"{backend}:g:{size}:bf16:compile" in ids
    for lfo in (0, 2):
        assert f"osediff:f+g-lfo{lfo}:512:bf16" in ids and f"osediff:f+g-lfo{lfo}:1024:fp16" in ids
    assert "osediff:f+g-lfo0:4096-tiled:bf16" in ids
    assert {f"train:b{b}:ckpt-{c}:bf16" for b in (1, 2) for c in ("on", "off")} <= set(ids)
    assert ids[0] == "osediff:f+g-lfo2:512:bf16"  # the headline target first; compilation last
    assert all(i.endswith(":compile") for i in ids[ids.index("osediff:f+g-lfo2:512:bf16:compile"):])


def test_the_dry_run_plan_has_the_same_cases_at_tiny_sizes():
    dry = _case_ids("--dry-run")
    assert len(dry) == len(_case_ids()) and "osediff:f+g-lfo2:64:fp32" in dry


def test_dry_run_measures_every_kind_of_case_and_writes_table_and_json(dry_run):
    done, out = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["dry_run"] is True and result["device"].startswith("cpu")
    rows = {row["case"]: row for row in result["cases"]}
    assert list(rows) == _case_ids("--dry-run", "--only", *SUBSET)
    for row in rows.values():
        assert ROW_FIELDS <= set(row), row["case"]
    measured = [row for row in rows.values() if not row["compile"]]
    assert {(r["kind"], r["backend"], r["lfo"]) for r in measured} == {
        ("inference", "osediff", 2), ("inference", "osediff", 0), ("inference", "osediff", None),
        ("tiling", "osediff", 0), ("inference", "s3diff", None), ("inference", "seesr", None),
        ("training", "osediff", None)}
    for row in measured:
        assert row["status"] == "ok", row
        assert row["s_per_image"] > 0 and row["images_per_s"] > 0 and row["peak_mem_gb"] > 0
    assert {r["dtype"] for r in measured} == {"fp32", "bf16"}
    assert rows["train:b1:ckpt-on:fp32"]["gradient_checkpointing"] is True
    headline = rows["osediff:f+g-lfo2:64:fp32"]
    assert headline["lfo_passes"] == 2
    assert "120 ms" in headline["target"] and "8 GB" in headline["target"] and headline["meets_target"] == ""
    assert rows["osediff:f+g-lfo0:96-tiled:fp32"]["target"] == "<= 16 GB"
    assert rows["train:b1:ckpt-on:fp32"]["target"] == "<= 40 GB"
    compiled = [row for row in rows.values() if row["compile"]]
    assert len(compiled) == 10 and all(r["status"].startswith("compile: not") for r in compiled)
    table = done.stdout
    assert "s/image" in table and "images/s" in table and "peak GB" in table and "target (H100)" in table
    assert "device: cpu" in table and "compare_official.py" in table
    assert len([line for line in table.splitlines() if line.startswith(("f+g ", "g ", "train step"))]) == len(rows)


def test_a_spent_budget_skips_the_cases_with_a_note(tmp_path):
    out = tmp_path / "skipped.json"
    done = _suite("--dry-run", "--budget", "0", "--json", str(out), "--only", "osediff:g:64:fp32",
                  "train:b1:ckpt-on:*", timeout=120)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["cases"]
    assert [r["case"] for r in rows] == ["osediff:g:64:fp32", "train:b1:ckpt-on:fp32"]
    assert all(r["status"] == "skipped: budget spent" and r["s_per_image"] is None for r in rows)
    assert "note: skipping osediff:g:64:fp32" in done.stdout and "2 case(s) skipped" in done.stdout


def test_a_pattern_that_matches_no_case_is_an_error():
    done = _suite("--list", "--only", "nothing:*", timeout=60)
    assert done.returncode == 2 and "no case matches nothing:*" in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_a_gpu_and_without_dry_run_it_exits_2_with_a_message(tmp_path):
    done = _suite("--json", str(tmp_path / "gpu.json"), timeout=60)
    assert done.returncode == 2
    assert "no CUDA GPU" in done.stderr and "--dry-run" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "gpu.json").exists()
