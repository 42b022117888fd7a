"""`elqproj selftest`: every part on the requested device and dtype, tiny random models built in memory."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path


from elqproj.adapters.base import RESTORERS, list_restorers, register_restorer
from elqproj.cli import main
from elqproj.selftest import run_selftest, tiny_engine
from tests.identity_restorer import IdentityRestorer


def test_selftest_passes_on_the_cpu_without_downloading_or_writing_anything():
    checks = run_selftest("cpu")
    names = [c.name for c in checks]
    assert names[:3] == ["engine + projector", "f: project", "f: Look Forward Once"]
    assert [n for n in names if n.startswith("g: ")] == [f"g: {name}" for name in list_restorers()]
    assert {"f: tiled", "degradations: realesrgan", "degradations: elq"} <= set(names)
    assert [c.name for c in checks if c.status == "fail"] == []
    assert all(c.status == "pass" for c in checks if c.name in ("g: osediff", "g: s3diff", "g: seesr"))
    assert list(Path(os.environ["ELQPROJ_CACHE"]).rglob("*")) == []


def test_the_tiny_engine_has_the_sd21_architecture_at_tiny_widths():
    engine = tiny_engine("cpu")
    assert engine.vae_scale_factor == 8 and engine.min_image_side == 64
    assert engine.encode_prompt(["a photo of a dog"]).shape == (1, 77, 32)


class _Broken(IdentityRestorer):
    name = "broken"

    @classmethod
    def tiny_random(cls, engine, *, seed=0):
        raise RuntimeError("this model is broken on purpose")


def test_a_failing_check_is_reported_and_the_others_still_run(capsys):
    with RESTORERS.isolated():
        register_restorer("broken", _Broken)
        assert main(["selftest", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "RuntimeError: this model is broken on purpose" in out
    assert "degradations: elq" in out and "1 failed" in out


def test_selftest_json_lists_every_check(capsys):
    assert main(["selftest", "--device", "cpu", "--json"]) == 0
    checks = json.loads(capsys.readouterr().out)
    assert all(set(c) == {"name", "status", "seconds", "detail"} for c in checks)
    assert {c["status"] for c in checks} <= {"pass", "skip"}


def test_a_dtype_the_cpu_cannot_run_is_a_clear_error(capsys):
    assert main(["selftest", "--device", "cpu", "--dtype", "fp16"]) == 2
    assert "bf16" in capsys.readouterr().err


class _NoBFloat16(IdentityRestorer):
    name = "no-bf16"
    capabilities = dataclasses.replace(IdentityRestorer.capabilities, supports_bf16=False)

    @classmethod
    def tiny_random(cls, engine, *, seed=0):
        raise AssertionError("a restorer that declares it cannot run bf16 must not be run in bf16")


def test_selftest_runs_in_bfloat16_and_skips_a_restorer_that_declares_it_cannot():
    with RESTORERS.isolated():
        register_restorer("no-bf16", _NoBFloat16)
        checks = run_selftest("cpu", "bf16")
    assert [c.name for c in checks if c.status == "fail"] == []
    (skipped,) = [c for c in checks if c.status == "skip"]
    assert skipped.name == "g: no-bf16" and "does not run in torch.bfloat16" in skipped.detail
