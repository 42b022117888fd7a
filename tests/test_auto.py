"""Auto mode and strength: severity buckets, per-image decisions in one batch, exact strength endpoints."""

from __future__ import annotations

import pytest
import torch

from elqproj import ConfigError, InvalidInputError, Projector, load_restorer
from elqproj.auto import AutoConfig, BucketAction, bucket, decide
from elqproj.pipeline import RestorationPipeline
from tests.conftest import OSEDIFF_GOLDEN_PKL, TINY_MUSIQ, TINY_SD21
from tests.identity_restorer import IdentityRestorer


@pytest.fixture(scope="module")
def projector():
    return Projector.from_base(TINY_SD21, device="cpu")


class StubScorer:
    """Severity scores given in advance (the real scorer is MUSIQ through pyiqa)."""

    def __init__(self, config, scores):
        self.config, self.scores, self.calls = config, list(scores), []

    def __call__(self, images):
        self.calls.append(images.clone())
        return self.scores[: images.shape[0]]


class Tagger:
    """A prompt extractor whose prompt depends on the image (so LFO passes differ)."""

    def __call__(self, images):
        return [f"mean {float(image.mean()):.4f}" for image in images]


def _images(batch=3, size=64):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("score, severity", [(95, "mild"), (70, "mild"), (69.9, "medium"), (40, "medium"),
                                             (39.9, "severe"), (3, "severe")])
def test_musiq_buckets_follow_adaptbirs_thresholds(score, severity):
    assert bucket(score, AutoConfig()) == severity


def test_thresholds_and_actions_are_configurable():
    config = AutoConfig(scorer="clipiqa")
    assert [bucket(s, config) for s in (0.7, 0.5, 0.39)] == ["mild", "medium", "severe"]
    config = AutoConfig(mild_at=50, severe_below=20, medium=BucketAction(projector=True, lfo=1, strength=0.3))
    assert decide([60, 30, 10], config) == [
        {"musiq": 60, "severity": "mild", "projector": False, "lfo": 0, "strength": 0.0},
        {"musiq": 30, "severity": "medium", "projector": True, "lfo": 1, "strength": 0.3},
        {"musiq": 10, "severity": "severe", "projector": True, "lfo": 2, "strength": 1.0},
    ]
    with pytest.raises(ConfigError, match="severe_below"):
        AutoConfig(mild_at=30, severe_below=50)


def test_without_a_projector_every_decision_is_g_alone():
    assert all(not d["projector"] and d["lfo"] == 0 for d in decide([10, 50], AutoConfig(), has_projector=False))


def test_strength_0_gives_g_exactly_the_sized_input_and_f_does_not_run(projector):
    g = IdentityRestorer()
    pipe = RestorationPipeline(g, projector=projector)
    calls = []
    hook = projector.engine.vae.encoder.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        x = _images(2)
        result = pipe(x, strength=0, seed=0, process_size=0, progress=False)
    finally:
        hook.remove()
    assert calls == [] and result.lq_passes == []
    assert torch.equal(g.calls[0]["lq"], x)


def test_strength_1_is_the_projector_and_between_is_the_pixel_mix(projector):
    g = IdentityRestorer()
    pipe = RestorationPipeline(g, projector=projector)
    x = _images(1)
    full = pipe(x, seed=0, process_size=0, progress=False).lq
    assert torch.equal(pipe(x, strength=1.0, seed=0, process_size=0, progress=False).lq, full)
    half = pipe(x, strength=0.25, seed=0, process_size=0, progress=False).lq
    torch.testing.assert_close(half, 0.75 * x + 0.25 * full, atol=1e-6, rtol=0)
    per_image = pipe(torch.cat([x, x]), strength=[0.0, 1.0], seed=[0, 0], process_size=0, progress=False).lq
    assert torch.equal(per_image[0:1], x)
    torch.testing.assert_close(per_image[1:2], full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("strength", [-0.1, 1.5, "high", [0.5]])
def test_strength_out_of_range_is_refused(projector, strength):
    pipe = RestorationPipeline(IdentityRestorer(), projector=projector)
    with pytest.raises(InvalidInputError, match="strength"):
        pipe(_images(2), strength=strength, progress=False)


def test_auto_mode_gives_each_image_of_a_batch_its_own_decision(projector):
    g = IdentityRestorer()
    pipe = RestorationPipeline(g, projector=projector, prompt_extractor=Tagger())
    pipe.severity_scorer = StubScorer(pipe.auto_config, [85.0, 55.0, 12.0])
    x = _images(3)
    seeds = [11, 12, 13]
    result = pipe(x, mode="auto", seed=seeds, process_size=0, progress=False)
    assert [d["severity"] for d in result.decision] == ["mild", "medium", "severe"]
    assert [(d["projector"], d["lfo"], d["strength"]) for d in result.decision] == [
        (False, 0, 0.0), (True, 0, 0.5), (True, 2, 1.0)]
    assert torch.equal(pipe.severity_scorer.calls[0], x)  # scored on the input as given
    assert "severity" in result.timings
    lq = result.lq  # the proxies g restored
    assert torch.equal(lq[0:1], x[0:1])  # mild: g alone on the input
    for index, (lfo, strength) in ((1, (0, 0.5)), (2, (2, 1.0))):
        alone = RestorationPipeline(IdentityRestorer(), projector=projector, prompt_extractor=Tagger())
        expected = alone(x[index:index + 1], lfo=lfo, strength=strength, seed=seeds[index], process_size=0,
                         progress=False)
        torch.testing.assert_close(lq[index:index + 1], expected.lq, atol=1e-4, rtol=0)
    assert result.lfo_passes == 2


def test_auto_mode_on_one_image_gives_one_decision_dict(projector):
    pipe = RestorationPipeline(IdentityRestorer(), projector=projector)
    pipe.severity_scorer = StubScorer(pipe.auto_config, [20.0])
    result = pipe(_images(1)[0], mode="auto", seed=0, process_size=0, progress=False)
    assert result.decision["severity"] == "severe" and result.decision["lfo"] == 2


@pytest.mark.parametrize("options, message", [({"lfo": 2}, "leave lfo"), ({"strength": 0.5}, "leave lfo"),
                                              ({"mode": "smart"}, "mode must be")])
def test_auto_mode_refuses_settings_it_chooses(projector, options, message):
    pipe = RestorationPipeline(IdentityRestorer(), projector=projector)
    with pytest.raises(InvalidInputError, match=message):
        pipe(_images(1), **({"mode": "auto"} | options), progress=False)


def test_auto_mode_needs_a_projector():
    with pytest.raises(InvalidInputError, match="has none"):
        RestorationPipeline(IdentityRestorer())(_images(1), mode="auto", progress=False)


def test_auto_mode_scores_with_musiq_through_pyiqa(projector, tiny_musiq):
    pipe = RestorationPipeline(IdentityRestorer(), projector=projector)
    pipe.auto_config = AutoConfig(scorer_options=TINY_MUSIQ)
    x = _images(2)
    result = pipe(x, mode="auto", seed=0, process_size=0, progress=False)
    expected = [tiny_musiq(x[i:i + 1]).item() for i in range(2)]
    assert [d["musiq"] for d in result.decision] == pytest.approx(expected, abs=1e-3)
    assert [d["severity"] for d in result.decision] == [bucket(s, pipe.auto_config) for s in expected]


def test_real_restorer_batch_with_mixed_decisions_runs(projector):
    g = load_restorer("osediff", weights=OSEDIFF_GOLDEN_PKL, base_model=TINY_SD21, device="cpu")
    pipe = RestorationPipeline(g, projector=projector)
    pipe.severity_scorer = StubScorer(pipe.auto_config, [90.0, 10.0])
    result = pipe(_images(2), mode="auto", seed=[1, 2], process_size=0, progress=False)
    assert result.image.shape == (2, 3, 64, 64) and torch.isfinite(result.image).all()
    assert [d["severity"] for d in result.decision] == ["mild", "severe"]


class BrightnessScorer:
    """Stands in for MUSIQ in the command-line tests: bright images score as mild, dark ones as severe."""

    def __init__(self, config, device=None):
        self.config = config

    def __call__(self, images):
        return [85.0 if float(image.mean()) > 0.5 else 12.0 for image in images]


def _flat(path, value):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 32), (value, value, value)).save(path)
    return path


def test_cli_auto_prints_and_records_each_decision(tmp_path, projector_dir, monkeypatch, capsys):
    import json

    import elqproj.auto
    from elqproj.cli import main

    monkeypatch.setattr(elqproj.auto, "SeverityScorer", BrightnessScorer)
    _flat(tmp_path / "in" / "bright.png", 230)
    _flat(tmp_path / "in" / "dark.png", 20)
    code = main(["restore", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--auto", "--projector",
                 str(projector_dir), "--backend", "osediff", "--backend-weights", str(OSEDIFF_GOLDEN_PKL),
                 "--base-model", str(TINY_SD21), "--seed", "0", "--device", "cpu", "--process-size", "64"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "bright.png: mild (musiq 85.0): g alone" in printed
    assert "dark.png: severe (musiq 12.0): f at strength 1, LFO×2" in printed
    records = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["decision"]["severity"] for r in records) == ["mild", "severe"]


def test_cli_auto_refuses_lfo_and_strength(tmp_path, capsys):
    from elqproj.cli import main

    _flat(tmp_path / "in" / "a.png", 100)
    assert main(["restore", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--auto", "--lfo", "2"]) == 2
    assert "--auto chooses" in capsys.readouterr().err


def test_cli_strength_reaches_the_pipeline(tmp_path, projector_dir, monkeypatch):
    from elqproj.cli import main

    seen = []
    real_call = RestorationPipeline.__call__
    monkeypatch.setattr(RestorationPipeline, "__call__",
                        lambda self, images, **kw: seen.append(kw["strength"]) or real_call(self, images, **kw))
    _flat(tmp_path / "in" / "a.png", 100)
    assert main(["restore", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--strength", "0.3", "--projector",
                 str(projector_dir), "--backend", "osediff", "--backend-weights", str(OSEDIFF_GOLDEN_PKL),
                 "--base-model", str(TINY_SD21), "--device", "cpu", "--process-size", "64", "-q"]) == 0
    assert seen == [0.3]
