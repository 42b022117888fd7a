"""Synthetic degradations: Real-ESRGAN's second-order pipeline with ordinary-LQ and extreme-LQ presets.

>>> from elqproj.degradations import DegradationPipeline, presets
>>> pipe = DegradationPipeline(presets.ELQ)
>>> params = pipe.sample(batch_size=8, generator=torch.Generator().manual_seed(0))
>>> lq = pipe.apply(hq, params)          # (B, 3, H, W) float in [0, 1], any device
>>> lq, params = pipe(hq, seed=0)

The building blocks (kernels, ``filter2d``, ``usm_sharpen``, noise, ``diff_jpeg``, ``resize``) are
plain batched tensor functions; :class:`DegradationTripletDataset` yields (ELQ, LQ, HQ) crops and
:func:`degrade_files` degrades image files.
"""

from . import presets
from .config import (
    BlurConfig,
    DegradationConfig,
    FinalSincConfig,
    NoiseConfig,
    ResizeConfig,
    StageConfig,
    USMConfig,
)
from .dataset import DegradationTripletDataset
from .files import degrade_files
from .filtering import filter2d, usm_sharpen
from .jpeg import diff_jpeg
from .kernels import (
    GaussianKernel,
    GeneralizedGaussianKernel,
    PlateauKernel,
    PulseKernel,
    SincKernel,
    gaussian_kernel,
    generalized_gaussian_kernel,
    plateau_kernel,
    sinc_kernel,
)
from .noise import NoiseSource, SeededNoise, add_gaussian_noise, add_poisson_noise
from .params import DegradationParams, NoiseParams, ResizeParams, USMParams
from .pipeline import DegradationPipeline, apply_degradation
from .resize import resize

__all__ = [
    "presets",
    "DegradationPipeline",
    "apply_degradation",
    "DegradationTripletDataset",
    "degrade_files",
    "DegradationConfig",
    "StageConfig",
    "BlurConfig",
    "ResizeConfig",
    "NoiseConfig",
    "FinalSincConfig",
    "USMConfig",
    "DegradationParams",
    "ResizeParams",
    "NoiseParams",
    "USMParams",
    "GaussianKernel",
    "GeneralizedGaussianKernel",
    "PlateauKernel",
    "SincKernel",
    "PulseKernel",
    "gaussian_kernel",
    "generalized_gaussian_kernel",
    "plateau_kernel",
    "sinc_kernel",
    "filter2d",
    "usm_sharpen",
    "diff_jpeg",
    "resize",
    "NoiseSource",
    "SeededNoise",
    "add_gaussian_noise",
    "add_poisson_noise",
]
