"""(ELQ, LQ, HQ) triplets for training and evaluating the projector.

Each item is one HQ crop and two degradations of it with independent draws: an ordinary LQ (the
distribution the frozen restorer g was trained on, OSEDiff's by default) and an extreme LQ (ELQ).
Both are resized back to the crop size, as OSEDiff does for its LQ, so the projector f maps
ELQ (S×S) → LQ (S×S) and g maps LQ → HQ.

Every random choice of an item (crop position, flip, both degradations) comes from a generator
seeded by ``(seed, epoch, index)``: an item is reproducible, independent of the order in which
items are read and of which DataLoader worker reads it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import imageio
from ..imageio import expand_image_paths
from ..errors import ConfigError, InvalidInputError
from . import presets
from .config import DegradationConfig
from .pipeline import DegradationPipeline
from ..seeding import derive_seed
from .sampling import RandomDraws

__all__ = ["DegradationTripletDataset", "hq_image_tensor", "center_crop_resized"]

ImageItem = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


def hq_image_tensor(source: ImageItem, *, max_pixels: int | None = None, name: str = "image") -> torch.Tensor:
    """One HQ image as a float32 ``(1, 3, H, W)`` CPU tensor in [0, 1].

    Args:
        source: an image file path, a PIL image (any mode: 16-bit precision is kept, an alpha channel
            dropped, the EXIF orientation applied), a numpy array ``(H, W, C)`` (uint8, uint16 or float
            in [0, 1]), or a float tensor ``(3, H, W)`` / ``(1, 3, H, W)`` in [0, 1].
        max_pixels: decompression-bomb limit (see :mod:`elqproj.imageio`).
        name: what ``source`` is, for error messages (e.g. ``"images[3]"``).

    Raises:
        InvalidInputError: (or a subclass) the source is of another type, holds several images, or
            is not a valid image.
    """
    if not isinstance(source, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor)):
        raise InvalidInputError(
            f"{name} is a {type(source).__name__}; expected an image path, a PIL image, a numpy array "
            "or a (3, H, W) tensor in [0, 1]"
        )
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu()
    try:
        image, _ = imageio.to_tensor(source, max_pixels=max_pixels)
    except InvalidInputError as err:
        raise type(err)(f"{name}: {err}") from None
    if image.shape[0] != 1:
        raise InvalidInputError(f"{name} holds {image.shape[0]} images; expected one (3, H, W) image")
    return image


def _list_images(images: str | os.PathLike | Iterable[ImageItem]) -> list[ImageItem]:
    if isinstance(images, (str, os.PathLike)):
        return list(expand_image_paths([os.fspath(images)]))
    return list(images)


def _resize_short_side(image: torch.Tensor, size: int) -> torch.Tensor:
    """(1, 3, H, W) → shorter side ``size``, antialiased bicubic, clamped back to [0, 1]."""
    height, width = image.shape[-2:]
    factor = size / min(height, width)
    new_size = (max(size, round(height * factor)), max(size, round(width * factor)))
    resized = F.interpolate(image, size=new_size, mode="bicubic", antialias=True, align_corners=False)
    return resized.clamp(0, 1)


def center_crop_resized(image: torch.Tensor, size: int) -> torch.Tensor:
    """The paper's evaluation crop: ``(1, 3, H, W)`` → shorter side resized to ``size`` (antialiased
    bicubic), then the centre ``(1, 3, size, size)``."""
    image = _resize_short_side(image, size)
    height, width = image.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2
    return image[:, :, top : top + size, left : left + size]


class DegradationTripletDataset(torch.utils.data.Dataset):
    """HQ crops with an ordinary-LQ and an extreme-LQ degradation of each.

    Args:
        images: a folder, a glob or a file path, or any iterable of image paths, PIL images, numpy
            arrays or float tensors ``(3, H, W)`` / ``(1, 3, H, W)`` in [0, 1] (materialised into a
            list; see :func:`hq_image_tensor`). A subclass that overrides :meth:`load_hq` passes
            whatever it indexes its own storage by.
        crop_size: side S of the square crops, in pixels.
        crop: ``"random"`` (training: a random S×S crop; images with a side below S are first
            resized up) or ``"center"`` (evaluation, the paper's protocol: resize the shorter side
            to S, then take the centre crop).
        hflip: random horizontal flips; default True for random crops, False for centre crops.
        lq_config: ordinary degradation (default ``presets.OSEDIFF``).
        elq_config: extreme degradation (default ``presets.ELQ``).
        seed: base seed of every random choice.
        return_params: also return both degradations' params as JSON strings (they collate into
            lists of strings), e.g. to apply the same degradation to a restored image.
        max_pixels: decompression-bomb limit for image files (see :mod:`elqproj.imageio`).

    Both configs must resize back to the input size (``resize_back=True``).

    Items are dicts: ``"elq"``, ``"lq"``, ``"hq"``: float32 ``(3, S, S)`` in [0, 1] (ELQ and LQ on the
    1/255 grid); ``"index"``: int; with ``return_params``: ``"lq_params"`` and ``"elq_params"``.
    """

    def __init__(
        self,
        images: str | os.PathLike | Iterable[ImageItem],
        *,
        crop_size: int = 512,
        crop: Literal["random", "center"] = "random",
        hflip: bool | None = None,
        lq_config: DegradationConfig | str = presets.OSEDIFF,
        elq_config: DegradationConfig | str = presets.ELQ,
        seed: int = 0,
        return_params: bool = False,
        max_pixels: int | None = None,
    ) -> None:
        if crop not in ("random", "center"):
            raise ConfigError(f"crop must be 'random' or 'center', got {crop!r}")
        if crop_size < 1:
            raise ConfigError(f"crop_size must be a positive number of pixels, got {crop_size}")
        self.images = _list_images(images)
        if not self.images:
            raise InvalidInputError(f"no images found in {images!r}")
        self.crop_size = crop_size
        self.crop = crop
        self.hflip = crop == "random" if hflip is None else hflip
        self.lq_pipeline = DegradationPipeline(lq_config)
        self.elq_pipeline = DegradationPipeline(elq_config)
        for role, pipeline in (("lq_config", self.lq_pipeline), ("elq_config", self.elq_pipeline)):
            if not pipeline.config.resize_back:
                raise ConfigError(
                    f"{role} {pipeline.config.name!r} has resize_back=False, so its output would not match the "
                    "HQ crop size; use presets.OSEDIFF / presets.ELQ or set resize_back=True"
                )
        self.seed = seed
        self.epoch = 0
        self.return_params = return_params
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        """Draw new crops and degradations for every item (call before each epoch's iterator)."""
        self.epoch = epoch

    def load_hq(self, index: int) -> torch.Tensor:
        """The full HQ image of item ``index``: float32 ``(1, 3, H, W)`` in [0, 1], before cropping.

        The hook for other sources: a subclass overrides it to read its own storage lazily (a
        database, a Hugging Face dataset, …); the constructor's ``images`` then holds whatever the
        subclass indexes by (row ids, keys), and :func:`hq_image_tensor` turns what it reads into
        this tensor. Cropping, flips and both degradations stay with this class.
        """
        return hq_image_tensor(self.images[index], max_pixels=self.max_pixels, name=f"images[{index}]")

    def _crop(self, image: torch.Tensor, draws: RandomDraws) -> torch.Tensor:
        size = self.crop_size
        if self.crop == "center":
            return center_crop_resized(image, size)
        if min(image.shape[-2:]) < size:
            image = _resize_short_side(image, size)
        height, width = image.shape[-2:]
        top, left = draws.integer(0, height - size), draws.integer(0, width - size)
        return image[:, :, top : top + size, left : left + size]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, index))
        draws = RandomDraws(generator)
        hq = self._crop(self.load_hq(index), draws)
        if self.hflip and draws.bernoulli(0.5):
            hq = hq.flip(-1)
        hq = hq.contiguous()
        lq_params = self.lq_pipeline.sample(1, generator)
        elq_params = self.elq_pipeline.sample(1, generator)
        item: dict[str, Any] = {
            "elq": self.elq_pipeline.apply(hq, elq_params)[0],
            "lq": self.lq_pipeline.apply(hq, lq_params)[0],
            "hq": hq[0],
            "index": index,
        }
        if self.return_params:
            item["lq_params"] = lq_params.model_dump_json()
            item["elq_params"] = elq_params.model_dump_json()
        return item
