"""Training and validation data: (ELQ, LQ, HQ) triplets from a folder or a Hugging Face dataset.

The triplets come from :class:`~elqproj.degradations.DegradationTripletDataset` (crops, flips and both
degradations drawn per item from ``(seed, epoch, index)``); training items also carry the LQ
degradation's parameters (JSON) so that the degrade-back D(ẑ) can reuse them.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import imageio
from ..degradations import DegradationConfig, DegradationTripletDataset
from ..degradations.presets import get_preset
from ..errors import ConfigError
from .config import DataSection, HFDatasetSection, TrainingConfig

__all__ = ["degradation_config", "HFTripletDataset", "build_train_dataset", "build_validation_batch"]


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def degradation_config(spec: str | dict[str, Any]) -> DegradationConfig:
    """A preset name, or ``{"preset": name, **overrides}`` deep-merged into that preset (or, without
    ``preset``, a complete :class:`DegradationConfig` mapping)."""
    if isinstance(spec, str):
        return get_preset(spec)
    fields = dict(spec)
    preset = fields.pop("preset", None)
    base = get_preset(preset).model_dump(mode="json") if preset is not None else {}
    if preset is not None and "name" not in fields:
        fields["name"] = f"{preset}-custom"
    return DegradationConfig.model_validate(_merge(base, fields))


class HFTripletDataset(DegradationTripletDataset):
    """Triplets over the rows of a Hugging Face dataset (any ``Sequence`` of mappings works), read lazily.

    Args:
        rows: indexable rows, e.g. ``datasets.load_dataset(...)``; ``rows[i][image_column]`` is a PIL
            image (the ``Image`` feature), an image path, or a ``(3, H, W)`` tensor in [0, 1].
        image_column: the column holding the HQ image.
        **kwargs: :class:`DegradationTripletDataset` options.
    """

    def __init__(self, rows: Any, *, image_column: str = "image", **kwargs: Any) -> None:
        self.rows = rows
        self.image_column = image_column
        # The parent materialises its `images` argument as a list: hand it row indices, read rows on demand.
        super().__init__(range(len(rows)), **kwargs)

    def _load(self, index: int) -> torch.Tensor:
        row = self.rows[index]
        if self.image_column not in row:
            raise ConfigError(
                f"data.hf_dataset.image_column {self.image_column!r} is not a column of the dataset "
                f"(row {index} has {sorted(row)})."
            )
        image = row[self.image_column]
        if isinstance(image, torch.Tensor):
            image = image[None] if image.ndim == 3 else image
            return imageio.check_image_tensor(image.detach().float().cpu(), name=f"row {index}")
        if isinstance(image, str):
            image = imageio.load_image(image, max_pixels=self.max_pixels)
        tensor, _ = imageio.to_tensor(image.convert("RGB") if hasattr(image, "convert") else image,
                                      max_pixels=self.max_pixels)
        return tensor


def _load_hf_rows(spec: HFDatasetSection) -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise ConfigError(
            "data.hf_dataset needs the Hugging Face `datasets` package: pip install datasets "
            "(or point data.train at a folder of images)."
        ) from exc
    return datasets.load_dataset(spec.path, spec.name, split=spec.split, revision=spec.revision)


def _triplets(data: DataSection, *, seed: int, crop: str, return_params: bool, limit: int | None = None,
              images: str | None = None, rows: Any = None) -> DegradationTripletDataset:
    options = dict(crop_size=data.crop_size, crop=crop, seed=seed, return_params=return_params,
                   lq_config=degradation_config(data.lq_degradation),
                   elq_config=degradation_config(data.elq_degradation))
    if rows is not None:
        if limit is not None:
            rows = [rows[i] for i in range(min(limit, len(rows)))]
        return HFTripletDataset(rows, image_column=data.hf_dataset.image_column, **options)
    dataset = DegradationTripletDataset(images, **options)
    if limit is not None:
        dataset.images = dataset.images[:limit]
    return dataset


def build_train_dataset(config: TrainingConfig, *, rows: Any = None) -> DegradationTripletDataset:
    """Random-crop triplets with the LQ degradation's parameters (``item["lq_params"]``, JSON).

    ``rows`` replaces loading ``config.data.hf_dataset`` (an already loaded dataset).
    """
    data = config.data
    if data.hf_dataset is not None and rows is None:
        rows = _load_hf_rows(data.hf_dataset)
    return _triplets(data, seed=config.seed, crop="random", return_params=True, images=data.train, rows=rows)


def build_validation_batch(config: TrainingConfig, *, rows: Any = None) -> dict[str, torch.Tensor] | None:
    """A fixed batch of centre-crop triplets for the validation grid (``None`` when disabled).

    Keys "elq", "lq", "hq": ``(N, 3, S, S)`` float32 in [0, 1]. Images come from ``data.validation``,
    else from the first training images; the degradations are drawn from a seed of their own.
    """
    count = config.training.num_validation_images
    if count == 0:
        return None
    data = config.data
    seed = config.seed + 1  # not the training seed: validation crops are not training items
    if data.validation is not None:
        dataset = _triplets(data, seed=seed, crop="center", return_params=False, images=data.validation, limit=count)
    else:
        if data.hf_dataset is not None and rows is None:
            rows = _load_hf_rows(data.hf_dataset)
        dataset = _triplets(data, seed=seed, crop="center", return_params=False, images=data.train, rows=rows,
                            limit=count)
    items = [dataset[i] for i in range(len(dataset))]
    return {key: torch.stack([item[key] for item in items]) for key in ("elq", "lq", "hq")}
