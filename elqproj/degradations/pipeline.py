"""The Real-ESRGAN second-order degradation, with sampling separated from applying.

>>> from elqproj.degradations import DegradationPipeline, presets
>>> pipe = DegradationPipeline(presets.ELQ)
>>> params = pipe.sample(batch_size=8, generator=torch.Generator().manual_seed(0))
>>> lq = pipe.apply(hq, params)          # deterministic given params
>>> lq, params = pipe(hq, seed=0)        # both at once

``apply`` is differentiable with respect to the input (``differentiable=True`` swaps the JPEG and
final rounding for their gradient-friendly approximations), so the same degradation can be applied
to a restored image, e.g. the degrade-back ``D(ẑ)`` of IRIB training.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..errors import InvalidInputError
from ..imageio import check_image_tensor
from .config import DegradationConfig, NoiseConfig, ResizeConfig
from .filtering import filter2d, usm_sharpen
from .jpeg import diff_jpeg
from .kernels import BlurKernel, sample_blur_kernel, sample_final_sinc, stack_kernels
from .noise import NoiseSource, SeededNoise, add_gaussian_noise, add_poisson_noise
from .params import DegradationParams, NoiseParams, ResizeParams, USMParams
from .presets import get_preset
from .resize import resize
from .sampling import RandomDraws

__all__ = ["DegradationPipeline", "apply_degradation"]


def _check_batch(images: torch.Tensor, params: DegradationParams) -> None:
    check_image_tensor(images, name="hq")
    if images.shape[0] != params.batch_size:
        raise InvalidInputError(
            f"the params were sampled for {params.batch_size} images but the batch has {images.shape[0]}; "
            f"sample with batch_size={images.shape[0]}"
        )


@contextmanager
def _stage(name: str) -> Iterator[None]:
    """Name the pipeline step in errors raised by the building blocks."""
    try:
        yield
    except InvalidInputError as error:
        raise InvalidInputError(f"{name}: {error}") from None


def _blur(img: torch.Tensor, kernels: list[BlurKernel]) -> torch.Tensor:
    return filter2d(img, stack_kernels(kernels, device=img.device, dtype=img.dtype))


def _add_noise(img: torch.Tensor, step: NoiseParams, source: NoiseSource) -> torch.Tensor:
    # CPU tensors: the noise functions move them to img's device.
    strength = torch.tensor(step.strength, dtype=img.dtype)
    gray = torch.tensor(step.gray)
    add = add_gaussian_noise if step.kind == "gaussian" else add_poisson_noise
    return add(img, strength, gray, source)


def _jpeg(img: torch.Tensor, qualities: list[float], differentiable: bool) -> torch.Tensor:
    # Clamp first: JPEG of out-of-range values gives unpleasant artefacts (official comment).
    quality = torch.tensor(qualities, dtype=torch.float32)
    return diff_jpeg(torch.clamp(img, 0, 1), quality, differentiable=differentiable)


def _to_uint8_grid(img: torch.Tensor, differentiable: bool) -> torch.Tensor:
    scaled = img * 255.0
    rounded = torch.round(scaled)  # half to even, as torch.round in the official code
    if differentiable:
        rounded = scaled + (rounded - scaled).detach()  # straight-through: identity gradient
    return torch.clamp(rounded, 0, 255) / 255.0


def apply_degradation(
    hq: torch.Tensor,
    params: DegradationParams,
    *,
    differentiable: bool = False,
    noise_sources: tuple[NoiseSource, NoiseSource] | None = None,
) -> torch.Tensor:
    """Degrade a batch with the given parameters (Real-ESRGAN ``feed_data`` order of operations).

    Args:
        hq: ``(B, 3, H, W)`` float RGB in [0, 1], any device; B = ``params.batch_size``. Half
            precision inputs are processed in float32.
        params: the sampled choices (:meth:`DegradationPipeline.sample`).
        differentiable: gradient-friendly rounding in the JPEGs and the final quantisation (the
            forward values of the final quantisation are unchanged; the JPEG uses DiffJPEG's cubic
            approximation).
        noise_sources: the random numbers of the two noise steps; by default drawn from the
            per-sample seeds in ``params``.

    Returns:
        ``(B, 3, h, w)`` in [0, 1] on the 1/255 grid, ``hq``'s dtype and device, where
        ``h, w = H // s, W // s`` (``s = params.final_scale``), or ``H, W`` when
        ``params.resize_back_mode`` is set.
    """
    _check_batch(hq, params)
    if noise_sources is None:
        noise_sources = (SeededNoise(params.noise1.seed), SeededNoise(params.noise2.seed))
    out = hq if hq.dtype in (torch.float32, torch.float64) else hq.float()
    height, width = out.shape[-2:]
    scale = params.final_scale
    final_size = (height // scale, width // scale)

    if params.usm is not None:
        with _stage("USM sharpening"):
            out = usm_sharpen(out, params.usm.weight, params.usm.radius, params.usm.threshold)
    with _stage("first blur"):
        out = _blur(out, params.blur1)
    with _stage("first resize"):
        out = resize(out, params.resize1.mode, scale_factor=params.resize1.scale)
    out = _add_noise(out, params.noise1, noise_sources[0])
    out = _jpeg(out, params.jpeg1, differentiable)

    if params.blur2 is not None:
        with _stage("second blur"):
            out = _blur(out, params.blur2)
    # The second resize targets a size relative to the *final* LQ size, not to the current one.
    second_size = (int(height / scale * params.resize2.scale), int(width / scale * params.resize2.scale))
    with _stage("second resize"):
        out = resize(out, params.resize2.mode, size=second_size)
    out = _add_noise(out, params.noise2, noise_sources[1])

    def resize_and_sinc(img: torch.Tensor) -> torch.Tensor:
        with _stage("final resize and sinc filter"):
            return _blur(resize(img, params.final_resize_mode, size=final_size), params.final_sinc)

    if params.final_order == "resize_sinc_then_jpeg":
        out = _jpeg(resize_and_sinc(out), params.jpeg2, differentiable)
    else:
        out = resize_and_sinc(_jpeg(out, params.jpeg2, differentiable))
    if params.resize_back_mode is not None:
        out = resize(out, params.resize_back_mode, size=(height, width))
    return _to_uint8_grid(out, differentiable).to(hq.dtype)


def _sample_resize(config: ResizeConfig, draws: RandomDraws) -> ResizeParams:
    direction = draws.weighted_choice(config.probs)
    if direction == "up":
        scale = draws.uniform(1.0, config.range[1])
    elif direction == "down":
        scale = draws.uniform(config.range[0], 1.0)
    else:
        scale = 1.0
    return ResizeParams(direction=direction, scale=scale, mode=draws.choice(config.modes))


def _sample_noise(config: NoiseConfig, batch_size: int, draws: RandomDraws) -> NoiseParams:
    gaussian = draws.bernoulli(config.gaussian_prob)
    strength_range = config.sigma_range if gaussian else config.poisson_scale_range
    return NoiseParams(
        kind="gaussian" if gaussian else "poisson",
        strength=[draws.uniform(*strength_range) for _ in range(batch_size)],
        gray=[draws.bernoulli(config.gray_prob) for _ in range(batch_size)],
        seed=[draws.seed() for _ in range(batch_size)],
    )


class DegradationPipeline:
    """Sample and apply second-order degradations from a :class:`DegradationConfig`.

    Args:
        config: a config, a preset name (``"realesrgan"``, ``"osediff"``, ``"elq"``) or a dict
            with the config's fields. It is validated again here, so a config edited with
            ``model_copy(update=...)`` (which pydantic does not validate) is checked too.
    """

    def __init__(self, config: DegradationConfig | str | dict) -> None:
        if isinstance(config, str):
            config = get_preset(config)
        if isinstance(config, DegradationConfig):
            config = config.model_dump()
        self.config = DegradationConfig.model_validate(config)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(config={self.config.name!r})"

    def sample(self, batch_size: int = 1, generator: torch.Generator | None = None) -> DegradationParams:
        """Draw every random choice for a batch of ``batch_size`` images.

        Args:
            batch_size: number of images the params will degrade.
            generator: a CPU ``torch.Generator``; the same seed gives the same params. ``None``
                draws from torch's global RNG.
        """
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        config = self.config
        draws = RandomDraws(generator)
        blur1 = [sample_blur_kernel(config.stage1.blur, draws) for _ in range(batch_size)]
        blur2 = [sample_blur_kernel(config.stage2.blur, draws) for _ in range(batch_size)]
        final_sinc = [sample_final_sinc(config.final_sinc, draws) for _ in range(batch_size)]
        resize1 = _sample_resize(config.stage1.resize, draws)
        noise1 = _sample_noise(config.stage1.noise, batch_size, draws)
        jpeg1 = [draws.uniform(*config.stage1.jpeg_range) for _ in range(batch_size)]
        second_blur = draws.bernoulli(config.second_blur_prob)
        resize2 = _sample_resize(config.stage2.resize, draws)
        noise2 = _sample_noise(config.stage2.noise, batch_size, draws)
        resize_first = draws.bernoulli(config.resize_sinc_first_prob)
        final_resize_mode = draws.choice(config.final_resize_modes)
        jpeg2 = [draws.uniform(*config.stage2.jpeg_range) for _ in range(batch_size)]
        final_scale = draws.integer(*config.final_scale)
        resize_back_mode = draws.choice(config.final_resize_modes) if config.resize_back else None
        return DegradationParams(
            usm=None if config.usm is None else USMParams(**config.usm.model_dump()),
            blur1=blur1,
            resize1=resize1,
            noise1=noise1,
            jpeg1=jpeg1,
            blur2=blur2 if second_blur else None,
            resize2=resize2,
            noise2=noise2,
            final_order="resize_sinc_then_jpeg" if resize_first else "jpeg_then_resize_sinc",
            final_resize_mode=final_resize_mode,
            final_sinc=final_sinc,
            jpeg2=jpeg2,
            final_scale=final_scale,
            resize_back_mode=resize_back_mode,
        )

    def apply(
        self,
        hq: torch.Tensor,
        params: DegradationParams,
        *,
        differentiable: bool = False,
        noise_sources: tuple[NoiseSource, NoiseSource] | None = None,
    ) -> torch.Tensor:
        """Degrade ``hq`` (B, 3, H, W) in [0, 1] with ``params``; see :func:`apply_degradation`."""
        return apply_degradation(hq, params, differentiable=differentiable, noise_sources=noise_sources)

    def __call__(
        self,
        hq: torch.Tensor,
        seed: int | None = None,
        *,
        generator: torch.Generator | None = None,
        differentiable: bool = False,
    ) -> tuple[torch.Tensor, DegradationParams]:
        """Sample params for ``hq``'s batch (from ``seed`` or ``generator``) and apply them.

        Returns:
            ``(lq, params)``; ``lq`` as in :func:`apply_degradation`.
        """
        if seed is not None and generator is not None:
            raise InvalidInputError("pass either seed or generator, not both")
        check_image_tensor(hq, name="hq")
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        params = self.sample(hq.shape[0], generator)
        return self.apply(hq, params, differentiable=differentiable), params
