"""Table 5's complexity measurement: MACs attributed to the pipeline's stages, parameter counts, tables."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from elqproj import InvalidInputError, RestorationPipeline, Restorer, RestorerCapabilities
from elqproj.evaluation.complexity import complexity_markdown, complexity_rows, count_macs, measure_complexity
from elqproj.prompts.base import PromptExtractor, PromptResult
from elqproj.value_range import unit_to_signed
from tests.conftest import OSEDIFF_GOLDEN_PKL

SIZE = 64
FAST = dict(size=SIZE, repeats=1, warmup=0)


class _LinearTagger(PromptExtractor):
    """Y with a model (a 2→2 linear layer, 6 parameters) that it does not run: texts only."""

    def __init__(self) -> None:
        self.model = torch.nn.Linear(2, 2)

    def extract(self, images):
        return PromptResult(texts=["a cat"] * images.shape[0])


class _OpRestorer(Restorer):
    """g = one known operation on the (B, 3, H, W) [0, 1] image: a 3×3 convolution, or self-attention over
    the pixels (each pixel a token of 3 channels)."""

    name = "op"
    capabilities = RestorerCapabilities(
        scale=1, steps=1, supports_fp16=False, supports_bf16=False, needs_prompt=False, uses_image_features=False,
        differentiable=False, code_licence="MIT", weights_licence="none", base_model="", default_weights=None,
        paper="", size_multiple=1, min_side=1, value_range="unit", color_fix="none",
    )

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    @classmethod
    def from_pretrained(cls, weights=None, **kwargs):
        return cls("conv")

    def _restore_batch(self, lq, *, prompts, image_features, seed, tiling, progress):
        if self.op == "conv":
            return self.conv(lq)
        tokens = lq.flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1 head, H·W tokens, 3 channels)
        return F.scaled_dot_product_attention(tokens, tokens, tokens).squeeze(1).transpose(1, 2).reshape(lq.shape)

    def restore(self, image, *, prompt=None, seed=None):
        return self.restore_batch(image, seed=seed)


@pytest.fixture(scope="module")
def pipeline(projector_dir):
    """f (a fresh projector on the tiny SD2.1) and OSEDiff g on f's own base, no prompt extractor."""
    return RestorationPipeline.from_components(projector=projector_dir, restorer="osediff",
                                               restorer_options={"weights": OSEDIFF_GOLDEN_PKL}, device="cpu")


@pytest.fixture(scope="module")
def reports(pipeline):
    """Baseline (g alone) and ours with 0 and 2 LFO rounds, at 64×64."""
    return {
        "baseline": measure_complexity(RestorationPipeline(pipeline.restorer), method="Baseline", **FAST),
        **{k: measure_complexity(pipeline, method=f"Ours (LFO×{k})", lfo=k, **FAST) for k in (0, 2)},
    }


def test_lfo_k_adds_k_projector_passes_less_the_vae_encoding_they_reuse(pipeline, reports):
    # No extractor: a round is f again on the cached ELQ latent (prompt embedding, UNet, VAE decoder).
    elq = unit_to_signed(torch.rand(1, 3, SIZE, SIZE))
    encoding = count_macs(lambda: pipeline.projector.encode_image(elq, seed=0))
    assert encoding > 0
    round_macs = reports[0].stage("project").macs - encoding
    assert reports[2].stage("lfo").macs == 2 * round_macs
    assert reports[2].total_macs - reports[0].total_macs == 2 * round_macs
    assert reports[2].stage("project").macs == reports[0].stage("project").macs


def test_lfo_rounds_run_even_when_the_extractors_prompts_repeat(pipeline, reports):
    # The pipeline itself stops LFO when a pass's prompts equal the previous pass's.
    same = RestorationPipeline(pipeline.restorer, projector=pipeline.projector,
                               prompt_extractor=lambda images: ["a cat"] * images.shape[0])
    report = measure_complexity(same, method="same prompt", lfo=2, **FAST)
    assert report.stage("lfo").macs == reports[2].stage("lfo").macs


def test_the_stages_are_those_the_pipeline_times(reports):
    assert [s.stage for s in reports[0].stages] == ["prompt", "project", "restore"]
    assert [s.stage for s in reports[2].stages] == ["prompt", "project", "lfo", "restore"]
    assert [s.stage for s in reports["baseline"].stages] == ["prompt", "restore"]
    assert all(s.seconds >= 0 for r in reports.values() for s in r.stages)
    assert reports[0].total_seconds == pytest.approx(sum(s.seconds for s in reports[0].stages))


def test_the_restorer_alone_projects_nothing_and_trains_nothing(reports):
    baseline = reports["baseline"]
    assert baseline.stage("project") is None and baseline.stage("lfo") is None
    assert baseline.params_trainable == 0
    assert baseline.params_total == baseline.params_unique  # one component
    assert baseline.stage("restore").macs == reports[0].stage("restore").macs  # g costs the same behind f
    assert baseline.stage("prompt").macs == 0  # no extractor


def test_a_base_shared_by_f_and_g_is_counted_once_per_component_in_the_total_and_once_in_memory(pipeline, reports):
    engine = pipeline.projector.engine
    assert pipeline.restorer.engine is engine
    lora = {id(p) for name in engine.adapter_sets() for p in engine.adapter_parameters(name)}
    base = sum(p.numel() for p in engine.parameters() if id(p) not in lora)
    ours = reports[0]
    assert ours.params_unique < ours.params_total
    assert ours.params_total - ours.params_unique == base
    # g's parameters are the same behind f; f adds the base once more and its own LoRA in the total.
    f_lora = sum(p.numel() for p in engine.adapter_parameters(pipeline.projector.adapter_set))
    assert ours.params_total == reports["baseline"].params_total + base + f_lora


def test_the_trainable_parameters_are_what_a_saved_projector_holds(pipeline, reports):
    saved = sum(t.numel() for t in pipeline.projector.state_for_saving().values())
    assert reports[0].params_trainable == reports[2].params_trainable == saved


def test_a_convolution_costs_h_w_cin_cout_k_k_macs():
    restorer = _OpRestorer("conv")
    report = measure_complexity(RestorationPipeline(restorer), method="conv", size=(16, 24), repeats=1, warmup=0)
    assert report.image_size == (16, 24)
    assert report.stage("restore").macs == report.total_macs == 16 * 24 * 3 * 3 * 3 * 3
    assert report.params_total == report.params_unique == 3 * 3 * 3 * 3 + 3


def test_the_prompt_extractors_model_counts_among_the_parameters():
    report = measure_complexity(RestorationPipeline(_OpRestorer("conv"), prompt_extractor=_LinearTagger()),
                                method="tagged", size=8, repeats=1, warmup=0)
    assert report.params_total == report.params_unique == 3 * 3 * 3 * 3 + 3 + 6
    assert report.params_trainable == 0


def test_attention_is_counted_on_the_cpu():
    report = measure_complexity(RestorationPipeline(_OpRestorer("attention")), method="attention", size=16,
                                repeats=1, warmup=0)
    tokens = 16 * 16
    assert report.stage("restore").macs == 2 * tokens * tokens * 3  # QKᵀ and the weighted sum of V


def test_the_rows_have_the_same_keys_in_millions_and_giga_units(reports):
    rows = complexity_rows([reports["baseline"], reports[2]])
    assert rows[0].keys() == rows[1].keys()
    assert rows[0]["gmacs_project"] == 0.0 and rows[0]["method"] == "Baseline"
    assert rows[1]["gmacs_total"] == pytest.approx(reports[2].total_macs / 1e9)
    assert rows[1]["params_total_m"] == pytest.approx(reports[2].params_total / 1e6)
    assert (rows[1]["height"], rows[1]["width"]) == (SIZE, SIZE)


def test_the_markdown_table_has_table_5s_columns_and_one_row_per_method(reports):
    table = complexity_markdown([reports["baseline"], reports[0], reports[2]]).splitlines()
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header[:5] == ["Method", "Time (s)", "GMACs", "Total params (M)", "Trainable params (M)"]
    assert header[5:] == [f"{s} GMACs" for s in ("prompt", "project", "lfo", "restore")] + [
        f"{s} (s)" for s in ("prompt", "project", "lfo", "restore")]
    assert len(table) == 2 + 3
    assert [line.split("|")[1].strip() for line in table[2:]] == ["Baseline", "Ours (LFO×0)", "Ours (LFO×2)"]


@pytest.mark.parametrize("options, message", [
    (dict(size=60), "multiple of 8"),
    (dict(size=(64, 0)), "pair"),
    (dict(size="64"), "pair"),
    (dict(repeats=0), "repeats"),
    (dict(warmup=-1), "warmup"),
    (dict(lfo=1), "has none"),
])
def test_settings_no_measurement_can_run_with_are_refused(options, message):
    pipe = RestorationPipeline(_OpRestorer("conv"))
    with pytest.raises(InvalidInputError, match=message):
        measure_complexity(pipe, method="x", **options)
