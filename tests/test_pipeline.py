"""ELQ -> LQ -> HQ pipeline and Look Forward Once (eq. 21-22)."""

from __future__ import annotations

import json

import pytest
import torch

from elqproj import ConfigError, InvalidInputError, Projector, WeightsNotFoundError, load_restorer
from elqproj.errors import ImageTooLargeError
from elqproj.pipeline import LFO_AUTO_CAP, LFO_MAX, RestorationPipeline
from elqproj.tiling import TilingConfig
from elqproj.value_range import signed_to_unit
from tests.conftest import OSEDIFF_GOLDEN_PKL, TINY_SD21
from tests.identity_restorer import IdentityRestorer


@pytest.fixture(scope="module")
def pipeline():
    projector = Projector.from_base(TINY_SD21, device="cpu")
    restorer = load_restorer("osediff", weights=OSEDIFF_GOLDEN_PKL, base_model=TINY_SD21, device="cpu")
    return RestorationPipeline(restorer, projector=projector)


def _with(pipeline: RestorationPipeline, extractor) -> RestorationPipeline:
    """The same f and g with prompt extractor ``extractor``."""
    return RestorationPipeline(pipeline.restorer, projector=pipeline.projector, prompt_extractor=extractor)


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
        res = _with(pipeline, tagger)(_elq(), lfo=lfo, seed=0, process_size=0)
    finally:
        handle.remove()
    assert len(tagger.calls) == lfo + 2
    assert counts == [1]  # the ELQ latent is computed once and reused by every pass
    assert res.prompts == [f"tag{i}" for i in range(lfo + 2)]
    assert len(res.lq_passes) == lfo + 1 and res.lfo_passes == lfo
    assert set(res.timings) == {"prompt", "project", "restore", "total"} | ({"lfo"} if lfo else set())


def test_return_rounds_gives_g_on_the_proxy_of_every_lfo_pass(pipeline):
    """Figure 10's series: HQ after round k is g(x̂^k; Y(x̂^k)); the last round is the result itself."""
    identity = IdentityRestorer()  # g(x) = x: each round's HQ must be that round's LQ proxy
    tagger = ScriptedTagger(["a", "b", "c", "final", "round 1", "round 2"])
    pipe = RestorationPipeline(identity, projector=pipeline.projector, prompt_extractor=tagger)
    res = pipe(_elq(1), lfo=2, seed=0, process_size=0, return_rounds=True)
    assert len(res.hq_rounds) == len(res.lq_passes) == 3
    for hq, lq in zip(res.hq_rounds, res.lq_passes):
        torch.testing.assert_close(hq, lq, atol=1e-6, rtol=0)
    torch.testing.assert_close(res.hq_rounds[-1], res.image)
    assert [call["prompts"] for call in identity.calls] == [["final"], ["round 1"], ["round 2"]]
    torch.testing.assert_close(tagger.calls[4], res.lq_passes[0])  # Y of each earlier proxy conditions its g
    assert "rounds" in res.timings
    assert pipe(_elq(1), lfo=2, seed=0, process_size=0).hq_rounds is None  # only on request


def test_stage_hooks_wrap_every_timed_stage_with_its_name(pipeline):
    from contextlib import contextmanager

    entered, calls = [], []

    @contextmanager
    def hook(stage):
        entered.append(stage)
        yield
        calls.append(len(pipe.restorer.calls))

    pipe = RestorationPipeline(IdentityRestorer(), projector=pipeline.projector,
                               prompt_extractor=ScriptedTagger(["a", "b", "c"]))
    pipe.stage_hooks.append(hook)
    res = pipe(_elq(1), lfo=1, seed=0, process_size=0)
    assert set(entered) == set(res.timings) - {"total"} == {"prompt", "project", "lfo", "restore"}
    assert entered[-1] == "restore" and calls[-1] == 1  # the hook is left after g ran inside it


def test_every_pass_conditions_on_the_previous_lq(pipeline):
    tagger = ScriptedTagger(["a", "b", "c"])
    res = _with(pipeline, tagger)(_elq(), lfo=1, seed=0, process_size=0)
    torch.testing.assert_close(tagger.calls[1], res.lq_passes[0])
    torch.testing.assert_close(tagger.calls[2], res.lq_passes[1])
    assert not torch.allclose(res.lq_passes[0], res.lq_passes[1])  # a new prompt changes f's output


def test_lfo_auto_stops_when_the_tags_stop_changing(pipeline):
    tagger = ScriptedTagger(["dog, gray", "dog, grass", "grass, dog", "cat"])
    res = _with(pipeline, tagger)(_elq(), lfo="auto", seed=0, process_size=0)
    # pass 1 changes the tag set, pass 2 returns the same set in another order: stop
    assert res.lfo_passes == 1
    assert res.prompts == ["dog, gray", "dog, grass", "cat"]


def test_lfo_auto_is_capped(pipeline):
    tagger = ScriptedTagger([f"t{i}" for i in range(20)])
    res = _with(pipeline, tagger)(_elq(), lfo="auto", seed=0, process_size=0)
    assert res.lfo_passes == LFO_AUTO_CAP and len(tagger.calls) == LFO_AUTO_CAP + 2


def test_batched_prompts_are_per_image(pipeline):
    tagger = ScriptedTagger([["a", "b"], ["c", "d"], ["e", "f"]])
    res = _with(pipeline, tagger)(_elq(2), lfo=1, seed=0, process_size=0)
    assert res.prompts == [["a", "b"], ["c", "d"], ["e", "f"]]
    assert res.image.shape == (2, 3, 64, 64)


def test_fixed_text_and_no_prompt(pipeline):
    assert pipeline(_elq(), prompt="a dog", seed=0, process_size=0).prompts == ["a dog", "a dog"]
    assert pipeline(_elq(), prompt=None, seed=0, process_size=0).prompts == ["", ""]


def test_a_fixed_text_replaces_the_extractor(pipeline):
    tagger = ScriptedTagger(["from the tagger"])
    res = _with(pipeline, tagger)(_elq(), prompt="a dog", lfo=1, seed=0, process_size=0)
    assert tagger.calls == []
    # f's pass with the same text again would repeat the first one: LFO stops before it.
    assert res.prompts == ["a dog"] * 2 and res.lfo_passes == 0 and "equal" in res.lfo_stop


@pytest.mark.parametrize("prompt", [["one", "two", "three"], [3, "x"], 7])
def test_a_fixed_text_needs_one_string_per_image(pipeline, prompt):
    with pytest.raises(InvalidInputError, match="one per image"):
        pipeline(_elq(2), prompt=prompt, process_size=0)


def test_an_extractor_name_is_not_a_prompt_extractor_object(pipeline):
    with pytest.raises(InvalidInputError, match="from_components"):
        RestorationPipeline(pipeline.restorer, prompt_extractor="ram")


def test_without_a_projector_g_restores_the_sized_input(pipeline, monkeypatch):
    alone = RestorationPipeline(pipeline.restorer)
    seen = {}
    restore_batch = pipeline.restorer.restore_batch

    def spy(lq, **kwargs):
        seen["input"] = signed_to_unit(lq)  # OSEDiff's tensor core takes [-1, 1]
        return restore_batch(lq, **kwargs)

    monkeypatch.setattr(pipeline.restorer, "restore_batch", spy)
    x = torch.rand(1, 3, 40, 48, generator=torch.Generator().manual_seed(1))
    res = alone(x, prompt="dog", seed=0, process_size=64)
    expected = torch.nn.functional.interpolate(x, size=(64, 77), mode="bicubic").clamp(0, 1)
    torch.testing.assert_close(seen["input"][..., :64, :77], expected)
    assert res.image.shape == (1, 3, 64, 77) and res.lq_passes == [] and res.prompts == [["dog"], ["dog"]]
    assert "project" not in res.timings


def test_lfo_without_a_projector_is_refused(pipeline):
    with pytest.raises(InvalidInputError, match="Look Forward Once re-runs the projector"):
        RestorationPipeline(pipeline.restorer)(_elq(), lfo=1)


def test_a_pipeline_saves_and_loads_its_whole_setup(tmp_path):
    """from_components by name -> save_pretrained -> from_pretrained: the same f (weights), g (name and
    weights) and Y, and the same result for the same seed."""
    projector = Projector.from_base(TINY_SD21, device="cpu", shared=False)
    with torch.no_grad():
        for p in projector.engine.adapter_parameters(projector.adapter_set):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.05)
    original = RestorationPipeline.from_components(
        projector=projector, restorer="osediff", restorer_options={"weights": OSEDIFF_GOLDEN_PKL},
        prompt_extractor="none", device="cpu")
    saved = original.save_pretrained(tmp_path / "pipe")
    spec = json.loads((saved / "pipeline.json").read_text())
    assert spec["projector"] == "projector" and (saved / "projector" / "projector.safetensors").is_file()
    assert spec["restorer"] == {"name": "osediff", "options": {
        "weights": str(OSEDIFF_GOLDEN_PKL), "base_model": str(TINY_SD21), "revision": None}}
    assert spec["prompt_extractor"] is None
    loaded = RestorationPipeline.from_pretrained(saved, device="cpu")
    assert loaded.restorer.name == "osediff" and loaded.prompt_extractor is None
    for key, value in original.projector.state_for_saving().items():
        torch.testing.assert_close(loaded.projector.state_for_saving()[key], value, rtol=0, atol=0)
    a = original(_elq(), prompt="dog", seed=1, process_size=0).image
    b = loaded(_elq(), prompt="dog", seed=1, process_size=0).image
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_component_not_loaded_by_name_cannot_be_saved(pipeline, tmp_path):
    with pytest.raises(ConfigError, match="not loaded by name"):
        _with(pipeline, ScriptedTagger(["x"])).save_pretrained(tmp_path / "pipe")


def test_a_folder_without_pipeline_json_is_not_a_pipeline(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="pipeline.json is missing"):
        RestorationPipeline.from_pretrained(tmp_path)


def test_same_seed_same_result(pipeline):
    a = pipeline(_elq(), prompt="x", seed=4, process_size=0).image
    b = pipeline(_elq(), prompt="x", seed=4, process_size=0).image
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_upscale_and_process_size_set_the_working_size(pipeline):
    res = pipeline(torch.rand(3, 20, 30), prompt="", seed=0, upscale=2, process_size=64)
    assert res.image.shape == (3, 64, 96)  # 2x gives a short side of 40 < 64: enlarged to 64
    res = pipeline(torch.rand(3, 40, 36), prompt="", seed=0, upscale=2, process_size=0)
    assert res.image.shape == (3, 80, 72)


def test_the_smallest_latent_tile_a_config_accepts_runs_through_the_unet(pipeline):
    tiled = RestorationPipeline(pipeline.restorer, projector=pipeline.projector)
    tiled.configure_tiling(TilingConfig(mode="always", latent_tile=4, latent_overlap=1))
    assert tiled(torch.rand(3, 64, 64), prompt="", seed=0, process_size=0).image.shape == (3, 64, 64)


def test_an_image_below_the_models_minimum_side_comes_back_at_its_own_size(pipeline):
    res = pipeline(torch.rand(3, 20, 30), prompt="", seed=0, process_size=0)  # f and g need 64 px
    assert res.image.shape == (3, 20, 30) and res.lq.shape == (3, 20, 30)


def test_a_thin_strip_is_refused_before_its_enlargement_is_allocated(pipeline):
    """A 1x4000 strip at the default 512-px short side would be 512x2,048,000 px (12.6 GB as floats)."""
    with pytest.raises(ImageTooLargeError, match=r"1x4000 \(H x W\) image would be processed at 512x2048000"):
        pipeline(torch.rand(1, 3, 1, 4000), prompt="")


def test_the_pixel_budget_is_the_processed_size_not_the_input(pipeline):
    with pytest.raises(ImageTooLargeError, match="upscale=2"):
        pipeline(torch.rand(3, 40, 40), prompt="", upscale=2, process_size=0, max_pixels=79 * 80)
    assert pipeline(torch.rand(3, 40, 40), prompt="", upscale=2, process_size=0, max_pixels=80 * 80).image.shape == (3, 80, 80)


def test_lfo_stops_when_a_pass_would_repeat_the_previous_one(pipeline):
    tagger = ScriptedTagger(["a", "b", "b", "b"])
    res = _with(pipeline, tagger)(_elq(), lfo=5, seed=0, process_size=0)
    assert res.lfo_passes == 1 and len(res.lq_passes) == 2
    assert res.prompts == ["a", "b", "b"] and "pass 2 equal those of pass 1" in res.lfo_stop


def test_lfo_that_runs_every_pass_has_no_stop_reason(pipeline):
    res = _with(pipeline, ScriptedTagger([f"t{i}" for i in range(9)]))(_elq(), lfo=2, seed=0, process_size=0)
    assert res.lfo_passes == 2 and res.lfo_stop is None


@pytest.mark.parametrize("lfo", [-1, 1.5, "twice", True, LFO_MAX + 1, 1000])
def test_bad_lfo_is_rejected(pipeline, lfo):
    with pytest.raises(InvalidInputError, match="lfo"):
        pipeline(_elq(), lfo=lfo)


def test_bad_upscale_is_rejected(pipeline):
    with pytest.raises(InvalidInputError, match="upscale"):
        pipeline(_elq(), upscale=0)


def test_seesr_receives_the_extractors_tags_and_image_features(monkeypatch):
    """Y's texts and image features of g's input reach SeeSR's restore (its ControlNet and image
    cross-attention are conditioned on them)."""
    from elqproj.prompts import PromptExtractor, PromptResult
    from tests.conftest import golden_set

    features = torch.randn(1, 16, 512, generator=torch.Generator().manual_seed(5))

    class Tagger(PromptExtractor):
        name = "features"

        def extract(self, images):
            return PromptResult(texts=["bird, branch"], image_features=features)

    seesr = load_restorer("seesr", weights=golden_set("seesr") / "seesr", base_model=TINY_SD21, device="cpu")
    seen = {}
    restore_batch = seesr.restore_batch

    def spy(lq, **kwargs):
        seen.update(kwargs, lq=lq)
        return restore_batch(lq, **kwargs)

    monkeypatch.setattr(seesr, "restore_batch", spy)
    pipe = RestorationPipeline(seesr, projector=Projector.from_base(TINY_SD21, device="cpu"), prompt_extractor=Tagger())
    res = pipe(_elq(), seed=0, process_size=0, restorer_options={"steps": 2})
    assert seen["image_features"] is features and seen["prompts"] == ["bird, branch"]
    assert seen["steps"] == 2 and seen["progress"] is True  # the pipeline's progress (on by default) reaches g
    assert seen["lq"].shape == (1, 3, 64, 64) and 0 <= seen["lq"].min() and seen["lq"].max() <= 1  # SeeSR's range
    assert res.image.shape == (3, 64, 64)


def test_a_restorer_that_cannot_tile_says_so():

    pipe = RestorationPipeline(IdentityRestorer())
    with pytest.raises(ConfigError, match="cannot tile"):
        pipe.configure_tiling(TilingConfig(mode="always"))
    assert pipe(_elq(), process_size=0).image.shape == (3, 64, 64)


def test_seesr_takes_a_tiling_configuration():
    from tests.conftest import golden_set

    seesr = load_restorer("seesr", weights=golden_set("seesr") / "seesr", base_model=TINY_SD21, device="cpu")
    config = TilingConfig(latent_tile=6, latent_overlap=2)
    before = seesr.tiling
    pipe = RestorationPipeline(seesr)
    pipe.configure_tiling(config)
    assert pipe.tiling is config and seesr.tiling is before  # per call, nothing shared changes


def test_tiling_a_pipeline_leaves_the_shared_engine_as_it_was(pipeline):
    """configure_tiling applies to the pipeline's own calls: the engine f and g share with every other
    pipeline on that base keeps its tiling (a CLI run with --tiling always must not leak into the next)."""

    engine = pipeline.projector.engine
    before = engine.tiling
    tiled = RestorationPipeline(pipeline.restorer, projector=pipeline.projector)
    tiled.configure_tiling(TilingConfig(mode="always", latent_tile=6, latent_overlap=2))
    a = tiled(_elq(), prompt="dog", seed=0, process_size=0).image
    assert engine.tiling is before
    b = pipeline(_elq(), prompt="dog", seed=0, process_size=0).image
    assert not torch.equal(a, b)  # the tiles were used in the tiled pipeline's call only


@pytest.mark.parametrize("seed", [True, -1, 2**70, 1.5, "7"])
def test_a_seed_torch_cannot_take_is_refused_by_name(pipeline, seed):
    with pytest.raises(InvalidInputError, match="seed must be None or an integer from 0 to 2\\*\\*64 - 1"):
        pipeline(_elq(), prompt="", seed=seed, process_size=0)


@pytest.mark.parametrize("process_size", [-5, "big", 1.5, True])
def test_a_bad_process_size_is_refused(pipeline, process_size):
    with pytest.raises(InvalidInputError, match="process_size must be a pixel count"):
        pipeline(_elq(), prompt="", process_size=process_size)


def test_the_restorer_core_refuses_a_bad_seed_too(pipeline):
    with pytest.raises(InvalidInputError, match="seed must be"):
        pipeline.restorer.restore_batch(torch.zeros(1, 3, 64, 64), seed=2**70)


@pytest.mark.parametrize(("options", "message"), [
    ({"stepz": 3}, r"Unknown options for the osediff restorer: \['stepz'\]"),
    ({"seed": 3}, r"restorer_options \['seed'\] are the pipeline's own settings"),
    ({"color_fix": "sepia"}, "Unknown color_fix 'sepia'"),
])
def test_bad_restorer_options_are_refused_before_f_runs(pipeline, options, message):
    counts, hook = _count_projector_encodes(pipeline)
    try:
        with pytest.raises(InvalidInputError, match=message):
            pipeline(_elq(), prompt="", process_size=0, restorer_options=options)
    finally:
        hook.remove()
    assert counts == []  # f never encoded the image


def test_compile_compiles_each_network_once_and_keeps_the_output():
    projector = Projector.from_base(TINY_SD21, device="cpu")
    restorer = load_restorer("osediff", weights=OSEDIFF_GOLDEN_PKL, base_model=TINY_SD21, device="cpu")
    pipe = RestorationPipeline(restorer, projector=projector)
    x = _elq(1)
    expected = pipe(x, seed=0, process_size=0, progress=False).image
    assert restorer.engine is projector.engine  # g on f's base: one copy of the networks...
    try:
        names = pipe.compile(backend="eager")  # dynamo traces the networks; no C++ toolchain needed
        assert names == ["projector.engine.unet", "projector.engine.vae"]  # ...compiled once
        assert projector.engine.unet._compiled_call_impl is not None
        torch.testing.assert_close(pipe(x, seed=0, process_size=0, progress=False).image, expected, atol=1e-5, rtol=0)
    finally:  # the engine is shared with the other tests' pipelines (one engine per base): leave it uncompiled
        for module in (projector.engine.unet, projector.engine.vae):
            module._compiled_call_impl = None


def test_compile_refuses_an_unknown_backend(pipeline):
    pipe = RestorationPipeline(IdentityRestorer(), projector=Projector.from_base(TINY_SD21, device="cpu"))
    with pytest.raises(ConfigError, match="torch.compile refused"):
        pipe.compile(backend="no-such-backend")


@pytest.fixture(scope="module")
def tiny_taesd(tmp_path_factory):
    """A random AutoencoderTiny with narrow blocks, saved as a diffusers folder."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("taesd")
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8)).save_pretrained(folder)
    return folder


def test_a_preview_decoder_shows_the_tagger_previews_and_g_the_full_decode(pipeline, tiny_taesd):
    from elqproj.preview import load_preview_decoder

    decodes = []
    hook = pipeline.projector.engine.vae.decoder.register_forward_pre_hook(lambda module, args: decodes.append(1))
    try:
        plain_tagger = ScriptedTagger(["a", "b", "c", "d"])
        plain = _with(pipeline, plain_tagger)(_elq(1), lfo=2, seed=0, process_size=0, progress=False)
        full_decodes = len(decodes)
        decodes.clear()
        tagger = ScriptedTagger(["a", "b", "c", "d"])
        pipe = _with(pipeline, tagger)
        pipe.preview_decoder = load_preview_decoder(tiny_taesd, device="cpu")
        res = pipe(_elq(1), lfo=2, seed=0, process_size=0, progress=False)
    finally:
        hook.remove()
    # three f passes and g's decode (g shares the engine); previews spare the decodes of the first two passes
    assert (full_decodes, len(decodes)) == (4, 2)
    torch.testing.assert_close(res.lq, plain.lq, atol=1e-6, rtol=0)  # g gets the full decode of the last pass
    assert not torch.allclose(tagger.calls[1], plain_tagger.calls[1], atol=1e-3)  # Y saw pass 1's preview
    assert res.prompts == plain.prompts


def test_the_default_preview_decoder_offline_without_cache_names_the_download(tmp_path):
    from elqproj.preview import load_preview_decoder

    with pytest.raises(WeightsNotFoundError, match="taesd"):
        load_preview_decoder("taesd", device="cpu")


def test_the_default_preview_decoder_comes_from_the_weights_table_through_the_hub_cache(tiny_taesd, offline_hub):
    from elqproj.preview import load_preview_decoder
    from elqproj.weights import COMPONENTS
    from tests.conftest import populate_hf_cache

    populate_hf_cache(offline_hub, COMPONENTS["taesd"].source,
                      {name: tiny_taesd / name for name in COMPONENTS["taesd"].files})
    decoder = load_preview_decoder("taesd", device="cpu")
    image = decoder(torch.zeros(1, 4, 8, 8))
    assert image.shape == (1, 3, 64, 64) and image.min() >= -1 and image.max() <= 1
