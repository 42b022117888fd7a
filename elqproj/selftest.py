"""``elqproj selftest``: does elqproj work on this machine, device and dtype?

Builds a tiny Stable Diffusion 2.1-architecture base **in memory** (random weights at tiny widths: no
download, no file), then runs every part of a restoration on it — f (the projector), Look Forward Once,
every registered restorer g that can build a tiny random model of itself (``Restorer.tiny_random``),
tiled inference, and the degradation presets — and reports each as a :class:`Check`. It says nothing
about quality (the weights are random); it is the first thing to run on a fresh machine and when a GPU,
driver or dtype misbehaves.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from .adapters.base import Restorer, RestorerCapabilities, get_restorer_class, list_restorers
from .devices import resolve_device_dtype
from .errors import NumericalError

__all__ = ["Check", "tiny_engine", "run_selftest", "format_checks"]

Status = Literal["pass", "fail", "skip"]


@dataclass
class Check:
    """One self-test step: ``status`` is "pass", "fail" or "skip"; ``seconds`` its wall time; ``detail``
    what was checked, why it was skipped, or the error."""

    name: str
    status: Status
    seconds: float
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tiny_engine(device: str | torch.device | None = None, dtype: torch.dtype | str | None = None, *,
                seed: int = 0):
    """A :class:`~elqproj.onestep.OneStepSD` with the SD2.1-base architecture at tiny widths (UNet and VAE
    with four levels of 32-64 channels, a 2-layer CLIP text encoder, a word-level tokenizer), randomly
    initialised from ``seed``, on ``device`` in ``dtype``. Its minimum image side is 64 px, like SD2.1's."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

    from .onestep import OneStepSD

    dev, dt = resolve_device_dtype(device, dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=32,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            block_out_channels=(32, 64, 64, 64), attention_head_dim=(2, 4, 4, 4), cross_attention_dim=32,
            use_linear_projection=True)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=32,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(32, 64, 64, 64), sample_size=64, scaling_factor=0.18215)
        words = ["<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>", "a", "photo", "of", "dog", "cat", "sky"]
        vocab = {word: index for index, word in enumerate(words)}
        backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
        backend.post_processor = processors.TemplateProcessing(
            single="<|startoftext|> $A <|endoftext|>",
            special_tokens=[("<|startoftext|>", vocab["<|startoftext|>"]), ("<|endoftext|>", vocab["<|endoftext|>"])])
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend, model_max_length=77, pad_token="<pad>", unk_token="<unk>",
            bos_token="<|startoftext|>", eos_token="<|endoftext|>")
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, projection_dim=32, pad_token_id=vocab["<pad>"],
            bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"]))
    schedule = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    engine = OneStepSD(vae, unet, text_encoder, tokenizer, schedule.alphas_cumprod.clone(),
                       base_model="tiny random SD2.1 (selftest)")
    return engine.to(device=dev, dtype=dt)


def _finite_image(x: torch.Tensor, shape: tuple[int, ...]) -> str:
    if tuple(x.shape) != shape:
        raise AssertionError(f"shape {tuple(x.shape)}, expected {shape}")
    if not torch.isfinite(x).all():
        raise NumericalError("the output holds NaN or inf")
    return f"{'x'.join(map(str, shape[-2:]))} px, finite, range [{x.min():.2f}, {x.max():.2f}]"


def run_selftest(device: str | torch.device | None = None, dtype: torch.dtype | str | None = None, *,
                 on_check: Callable[[Check], None] | None = None) -> list[Check]:
    """Run every check on ``device`` in ``dtype`` (defaults as everywhere: CUDA when available, float32).

    A failing check does not stop the others (except that nothing runs without the engine). ``on_check``
    is called with each result as it comes (the CLI prints a line per check).

    Returns:
        The checks in order.
    """
    from .degradations import DegradationPipeline, presets
    from .pipeline import RestorationPipeline
    from .projector import Projector
    from .tiling import TilingConfig

    dev, dt = resolve_device_dtype(device, dtype)
    checks: list[Check] = []
    image = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))

    def check(name: str, run: Callable[[], str]) -> Any:
        start = time.perf_counter()
        try:
            detail, status = run(), "pass"
        except NotImplementedError as exc:
            detail, status = str(exc), "skip"
        except Exception as exc:  # a self-test reports every failure, whatever its type
            last = traceback.extract_tb(exc.__traceback__)[-1]
            detail, status = f"{type(exc).__name__}: {exc} ({last.filename}:{last.lineno})", "fail"
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        result = Check(name, status, time.perf_counter() - start, detail)
        checks.append(result)
        if on_check is not None:
            on_check(result)
        return result

    built: dict[str, Any] = {}

    def build() -> str:
        built["engine"] = tiny_engine(dev, dt)
        built["projector"] = Projector.from_engine(built["engine"])
        return f"tiny SD2.1 in memory on {dev}, {str(dt).removeprefix('torch.')}"

    if check("engine + projector", build).status != "pass":
        return checks
    engine, projector = built["engine"], built["projector"]

    def project() -> str:
        return _finite_image(projector.project(image, prompt="a photo", seed=0), tuple(image.shape))

    check("f: project", project)

    def lfo() -> str:
        calls = iter(range(100))
        pipe = RestorationPipeline(_Identity(), projector=projector,
                                   prompt_extractor=lambda images: [f"a photo {next(calls)}"] * images.shape[0])
        result = pipe(image, lfo=2, seed=0, process_size=0, progress=False)
        if result.lfo_passes != 2:
            raise AssertionError(f"{result.lfo_passes} LFO passes ran, 2 expected")
        return "2 passes, " + _finite_image(result.lq, tuple(image.shape))

    check("f: Look Forward Once", lfo)

    for name in list_restorers():
        def restore(name: str = name) -> str:
            restorer_class = get_restorer_class(name)
            if not restorer_class.capabilities.supports_dtype(dt):
                raise NotImplementedError(f"the {name} restorer declares that it does not run in {dt}")
            restorer = restorer_class.tiny_random(engine)
            pipe = RestorationPipeline(restorer, projector=projector)
            result = pipe(image, prompt="a photo", seed=0, process_size=0, progress=False,
                          restorer_options={"steps": 2} if restorer.capabilities.steps > 1 else None)
            return _finite_image(result.image, tuple(image.shape))

        check(f"g: {name}", restore)

    def tiled() -> str:
        pipe = RestorationPipeline(_Identity(), projector=projector)
        pipe.configure_tiling(TilingConfig(mode="always", latent_tile=4, latent_overlap=1, vae_encoder_tile=32,
                                           vae_encoder_pad=8, vae_decoder_tile=4, vae_decoder_pad=2))
        return "latent and VAE tiles, " + _finite_image(
            pipe(image, prompt="a photo", seed=0, process_size=0, progress=False).lq, tuple(image.shape))

    check("f: tiled", tiled)

    hq = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)).to(dev)
    for preset in ("realesrgan", "elq"):
        def degrade(preset: str = preset) -> str:
            lq, _ = DegradationPipeline(presets.get_preset(preset))(hq, seed=0)
            if not torch.isfinite(lq).all() or lq.min() < 0 or lq.max() > 1:
                raise NumericalError("the degraded batch is not finite in [0, 1]")
            return f"(2, 3, 64, 64) -> {tuple(lq.shape)} in [0, 1]"

        check(f"degradations: {preset}", degrade)
    return checks


class _Identity(Restorer):
    """A stand-in g for the checks of f alone: returns its input (the pipeline's contract, nothing more)."""

    name = "identity"
    capabilities = RestorerCapabilities(
        scale=1, steps=1, supports_fp16=True, supports_bf16=True, needs_prompt=False, uses_image_features=False,
        differentiable=False, code_licence="", weights_licence="", base_model="", default_weights=None, paper="",
        supports_tiling=True, size_multiple=1, min_side=1, value_range="unit", color_fix="none")

    @classmethod
    def from_pretrained(cls, weights: Any = None, **kwargs: Any) -> _Identity:
        return cls()

    def restore(self, image: Any, *, prompt: Any = None, seed: int | None = None) -> Any:
        return image

    def _restore_batch(self, lq, *, prompts, image_features, seed, tiling, progress):
        return lq


def format_checks(checks: list[Check]) -> str:
    """The checks as a plain-text table (status, seconds, name, detail) with a summary line."""
    lines = [f"{'status':<6}  {'seconds':>7}  {'check':<26}  detail"]
    for c in checks:
        lines.append(f"{c.status.upper():<6}  {c.seconds:7.2f}  {c.name:<26}  {c.detail}")
    counts = {status: sum(c.status == status for c in checks) for status in ("pass", "fail", "skip")}
    lines.append(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
    return "\n".join(lines)
