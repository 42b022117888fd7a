"""Blur kernels: their parameters, builders and sampler (Real-ESRGAN's kernel families).

Builders return float64 ``(k, k)`` tensors that sum to 1, evaluated on the integer grid centred on
the middle tap (``x`` is the column offset, ``y`` the row offset). With ``p = (x, y)`` and the
covariance ``S = R diag(sigma_x², sigma_y²) Rᵀ`` (``R`` the rotation by ``theta`` radians):

* Gaussian: ``exp(-½ pᵀS⁻¹p)``
* generalized Gaussian: ``exp(-½ (pᵀS⁻¹p)^beta)`` (beta acts on the quadratic form, the ½ stays out)
* plateau: ``1 / ((pᵀS⁻¹p)^beta + 1)``
* sinc (circular low-pass): ``cutoff · J1(cutoff·r) / (2π r)``, centre ``cutoff² / (4π)``

Isotropic kernels are the anisotropic formula with ``sigma_y = sigma_x`` and ``theta = 0`` (bitwise
the same matrix). The official code builds these with numpy; there is no torch library for them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Literal

import scipy.special
import torch
import torch.nn.functional as F
from pydantic import AfterValidator, Field

from ..validation import ParamsModel
from .config import BlurConfig, FinalSincConfig
from .sampling import RandomDraws

__all__ = [
    "mesh_grid",
    "sigma_matrix",
    "gaussian_kernel",
    "generalized_gaussian_kernel",
    "plateau_kernel",
    "sinc_kernel",
    "GaussianKernel",
    "GeneralizedGaussianKernel",
    "PlateauKernel",
    "SincKernel",
    "PulseKernel",
    "BlurKernel",
    "stack_kernels",
    "sample_blur_kernel",
    "sample_final_sinc",
]


def _odd_size(size: int) -> int:
    if size < 3 or size % 2 == 0:
        raise ValueError(f"kernel size must be odd and >= 3, got {size}")
    return size


KernelSize = Annotated[int, AfterValidator(_odd_size)]
Sigma = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
Beta = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]


def mesh_grid(size: int) -> torch.Tensor:
    """Integer offsets from the centre tap: ``(size, size, 2)`` float64, ``[..., 0]`` = x (column),
    ``[..., 1]`` = y (row), each in ``[-(size//2), size//2]``."""
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    y, x = torch.meshgrid(offsets, offsets, indexing="ij")
    return torch.stack((x, y), dim=-1)


def sigma_matrix(sigma_x: float, sigma_y: float, theta: float) -> torch.Tensor:
    """Covariance ``R diag(sigma_x², sigma_y²) Rᵀ`` with ``R`` the rotation by ``theta``: (2, 2) float64."""
    cos, sin = math.cos(theta), math.sin(theta)
    rotation = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64)
    scales = torch.diag(torch.tensor([sigma_x**2, sigma_y**2], dtype=torch.float64))
    return rotation @ scales @ rotation.T


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> torch.Tensor:
    grid = mesh_grid(size)
    inverse = torch.linalg.inv(sigma_matrix(sigma_x, sigma_y, theta))
    return torch.einsum("...i,ij,...j->...", grid, inverse, grid)


def _normalised(kernel: torch.Tensor) -> torch.Tensor:
    return kernel / kernel.sum()


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float = 0.0) -> torch.Tensor:
    """Anisotropic Gaussian kernel, ``(size, size)`` float64 summing to 1."""
    return _normalised(torch.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, theta)))


def generalized_gaussian_kernel(
    size: int, sigma_x: float, sigma_y: float, theta: float, beta: float
) -> torch.Tensor:
    """Generalized Gaussian kernel (beta = 1 is the Gaussian), ``(size, size)`` float64 summing to 1."""
    return _normalised(torch.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, theta) ** beta))


def plateau_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> torch.Tensor:
    """Plateau kernel ``1 / (q^beta + 1)``, ``(size, size)`` float64 summing to 1."""
    return _normalised(1.0 / (_quadratic_form(size, sigma_x, sigma_y, theta) ** beta + 1.0))


def sinc_kernel(size: int, cutoff: float) -> torch.Tensor:
    """Circular low-pass (2-D sinc) kernel with ``cutoff`` in radians per pixel (pi = Nyquist),
    ``(size, size)`` float64 summing to 1."""
    radius = mesh_grid(size).square().sum(-1).sqrt()
    centre = radius == 0
    safe_radius = torch.where(centre, torch.ones_like(radius), radius)  # J1(r)/r is finite at 0
    # scipy's J1 is accurate to ~1e-16; torch.special.bessel_j1 is off by up to ~5e-7.
    bessel = torch.from_numpy(scipy.special.j1((cutoff * safe_radius).numpy()))
    kernel = cutoff * bessel / (2 * math.pi * safe_radius)
    kernel = torch.where(centre, torch.full_like(kernel, cutoff**2 / (4 * math.pi)), kernel)
    return _normalised(kernel)


class GaussianKernel(ParamsModel):
    """A Gaussian blur (Real-ESRGAN ``iso``/``aniso``); sigmas in pixels, theta in radians."""

    kind: Literal["gaussian"] = "gaussian"
    size: KernelSize
    sigma_x: Sigma
    sigma_y: Sigma
    theta: float = 0.0

    def tensor(self) -> torch.Tensor:
        return gaussian_kernel(self.size, self.sigma_x, self.sigma_y, self.theta)


class GeneralizedGaussianKernel(ParamsModel):
    """A generalized Gaussian blur (``generalized_iso``/``generalized_aniso``)."""

    kind: Literal["generalized_gaussian"] = "generalized_gaussian"
    size: KernelSize
    sigma_x: Sigma
    sigma_y: Sigma
    theta: float = 0.0
    beta: Beta

    def tensor(self) -> torch.Tensor:
        return generalized_gaussian_kernel(self.size, self.sigma_x, self.sigma_y, self.theta, self.beta)


class PlateauKernel(ParamsModel):
    """A plateau-shaped blur (``plateau_iso``/``plateau_aniso``)."""

    kind: Literal["plateau"] = "plateau"
    size: KernelSize
    sigma_x: Sigma
    sigma_y: Sigma
    theta: float = 0.0
    beta: Beta

    def tensor(self) -> torch.Tensor:
        return plateau_kernel(self.size, self.sigma_x, self.sigma_y, self.theta, self.beta)


class SincKernel(ParamsModel):
    """A circular low-pass filter (ringing and overshoot artefacts)."""

    kind: Literal["sinc"] = "sinc"
    size: KernelSize
    cutoff: float = Field(gt=0.0, le=math.pi)

    def tensor(self) -> torch.Tensor:
        return sinc_kernel(self.size, self.cutoff)


class PulseKernel(ParamsModel):
    """The identity filter (the official 21×21 "pulse": the final sinc was not drawn)."""

    kind: Literal["pulse"] = "pulse"

    def tensor(self) -> torch.Tensor:
        return torch.ones(1, 1, dtype=torch.float64)


#: Any kernel the pipeline can apply; JSON carries the ``kind`` discriminator.
BlurKernel = Annotated[
    GaussianKernel | GeneralizedGaussianKernel | PlateauKernel | SincKernel | PulseKernel,
    Field(discriminator="kind"),
]


def stack_kernels(
    kernels: Sequence[BlurKernel], *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """One kernel per sample, centred and zero-padded to the largest: ``(B, k, k)``.

    Zero taps do not change a cross-correlation, so padding only costs time (it is what the
    official dataset does, to a fixed 21).
    """
    tensors = [kernel.tensor() for kernel in kernels]
    size = max(tensor.shape[-1] for tensor in tensors)
    padded = [F.pad(tensor, [(size - tensor.shape[-1]) // 2] * 4) for tensor in tensors]
    return torch.stack(padded).to(device=device, dtype=dtype)


def sample_blur_kernel(config: BlurConfig, draws: RandomDraws) -> BlurKernel:
    """Draw one blur kernel from ``config`` (Real-ESRGAN's dataset-side rule)."""
    size = draws.choice(config.kernel_sizes)
    if draws.bernoulli(config.sinc_prob):
        # Official: small kernels cannot represent low cutoffs, so they get a higher floor.
        low = math.pi / 3 if size < 13 else math.pi / 5
        return SincKernel(size=size, cutoff=draws.uniform(low, math.pi))
    kernel_type = draws.weighted_choice(config.kernel_probs)
    sigma_x = draws.uniform(*config.sigma_range)
    if kernel_type in ("iso", "generalized_iso", "plateau_iso"):
        sigma_y, theta = sigma_x, 0.0
    else:
        sigma_y = draws.uniform(*config.sigma_range)
        theta = draws.uniform(*config.rotation_range)
    if kernel_type in ("iso", "aniso"):
        return GaussianKernel(size=size, sigma_x=sigma_x, sigma_y=sigma_y, theta=theta)
    beta_low, beta_high = config.betag_range if kernel_type.startswith("generalized") else config.betap_range
    # Official: half the draws below 1, half above, whatever the range's proportions.
    beta = draws.uniform(beta_low, 1.0) if draws.bernoulli(0.5) else draws.uniform(1.0, beta_high)
    family = GeneralizedGaussianKernel if kernel_type.startswith("generalized") else PlateauKernel
    return family(size=size, sigma_x=sigma_x, sigma_y=sigma_y, theta=theta, beta=beta)


def sample_final_sinc(config: FinalSincConfig, draws: RandomDraws) -> SincKernel | PulseKernel:
    """Draw the final filter: a sinc with probability ``config.prob``, else the identity."""
    if not draws.bernoulli(config.prob):
        return PulseKernel()
    return SincKernel(size=draws.choice(config.kernel_sizes), cutoff=draws.uniform(*config.cutoff_range))
