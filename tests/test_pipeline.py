"""ELQ -> LQ -> HQ pipeline and Look Forward Once (eq. 21-22)."""

from __future__ import annotations

import pytest
import torch

from elqproj import InvalidInputError, Projector, load_restorer
from elqproj.pipeline import LFO_AUTO_CAP, RestorationPipeline
from tests.conftest import OSEDIFF_GOLDEN_PKL, TINY_SD21


@pytest.fixture(scope="module")
def pipeline():
    projector = Projector.from_base(TINY_SD21, device="cpu")
    restorer = load_restorer("osediff", weights=OSEDIFF_GOLDEN_PKL, base_model=TINY_SD21, device="cpu")
    return RestorationPipeline(projector, restorer)


class ScriptedTagger:
    """A callable prompt extractor that returns scripted prompts and records every call."""

    def __init__(self, script):
        self.script = list(script)
        self.calls: list[torch.Tensor] = []

    def __call__(self, images):
        self.calls.append(images)
        step = self.script[min(len(self.calls), len(self.script)) - 1]
        return [step] * len(images) if isinstance(step, str) else list(step)


def _count_projector_encodes(pipeline):
    engine, counts = pipeline.projector.engine, []

    def hook(module, args):
        if engine.active_set == pipeline.projector.adapter_set:
            counts.append(args[0].shape[0])

    return counts, engine.vae.encoder.register_forward_pre_hook(hook)


def _elq(batch: int | None = None) -> torch.Tensor:
    """One (3,64,64) image (prompts come back as one string per pass), or a (B,3,64,64) batch."""
    shape = (3, 64, 64) if batch is None else (batch, 3, 64, 64)
    return torch.rand(shape, generator=torch.Generator().manual_seed(batch or 0))


@pytest.mark.parametrize("lfo", [0, 1, 2])
def test_lfo_calls_the_extractor_k_plus_2_times_and_encodes_once(pipeline, lfo):
    tagger = ScriptedTagger([f"tag{i}" for i in range(10)])
    counts, handle = _count_projector_encodes(pipeline)
    try:
        res = pipeline(_elq(), prompt=tagger, lfo=lfo, seed=0, process_size=0)
    finally:
        handle.remove()
    assert len(tagger.calls) == lfo + 2
    assert counts == [1]  # the ELQ latent is computed once and reused by every pass
    assert res.prompts == [f"tag{i}" for i in range(lfo + 2)]
    assert len(res.lq_passes) == lfo + 1 and res.lfo_passes == lfo
    assert set(res.timings) == {"prompt", "project", "restore", "total"} | ({"lfo"} if lfo else set())


def test_every_pass_conditions_on_the_previous_lq(pipeline):
    tagger = ScriptedTagger(["a", "b", "c"])
    res = pipeline(_elq(), prompt=tagger, lfo=1, seed=0, process_size=0)
    torch.testing.assert_close(tagger.calls[1], res.lq_passes[0])
    torch.testing.assert_close(tagger.calls[2], res.lq_passes[1])
    assert not torch.allclose(res.lq_passes[0], res.lq_passes[1])  # a new prompt changes f's output


def test_lfo_auto_stops_when_the_tags_stop_changing(pipeline):
    tagger = ScriptedTagger(["dog, gray", "dog, grass", "grass, dog", "cat"])
    res = pipeline(_elq(), prompt=tagger, lfo="auto", seed=0, process_size=0)
    # pass 1 changes the tag set, pass 2 returns the same set in another order: stop
    assert res.lfo_passes == 1
    assert res.prompts == ["dog, gray", "dog, grass", "cat"]


def test_lfo_auto_is_capped(pipeline):
    tagger = ScriptedTagger([f"t{i}" for i in range(20)])
    res = pipeline(_elq(), prompt=tagger, lfo="auto", seed=0, process_size=0)
    assert res.lfo_passes == LFO_AUTO_CAP and len(tagger.calls) == LFO_AUTO_CAP + 2


def test_batched_prompts_are_per_image(pipeline):
    tagger = ScriptedTagger([["a", "b"], ["c", "d"], ["e", "f"]])
    res = pipeline(_elq(2), prompt=tagger, lfo=1, seed=0, process_size=0)
    assert res.prompts == [["a", "b"], ["c", "d"], ["e", "f"]]
    assert res.image.shape == (2, 3, 64, 64)


def test_fixed_text_and_no_prompt(pipeline):
    assert pipeline(_elq(), prompt="a dog", seed=0, process_size=0).prompts == ["a dog", "a dog"]
    assert pipeline(_elq(), prompt=None, seed=0, process_size=0).prompts == ["", ""]


def test_same_seed_same_result(pipeline):
    a = pipeline(_elq(), prompt="x", seed=4, process_size=0).image
    b = pipeline(_elq(), prompt="x", seed=4, process_size=0).image
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_upscale_and_process_size_set_the_working_size(pipeline):
    res = pipeline(torch.rand(3, 20, 30), prompt="", seed=0, upscale=2, process_size=64)
    assert res.image.shape == (3, 64, 96)  # 2x gives a short side of 40 < 64: enlarged to 64
    res = pipeline(torch.rand(3, 40, 36), prompt="", seed=0, upscale=2, process_size=0)
    assert res.image.shape == (3, 80, 72)


@pytest.mark.parametrize("lfo", [-1, 1.5, "twice", True])
def test_bad_lfo_is_rejected(pipeline, lfo):
    with pytest.raises(InvalidInputError, match="lfo"):
        pipeline(_elq(), lfo=lfo)


def test_bad_upscale_is_rejected(pipeline):
    with pytest.raises(InvalidInputError, match="upscale"):
        pipeline(_elq(), upscale=0)
