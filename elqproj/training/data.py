"""Training and validation data: (ELQ, LQ, HQ) triplets from a folder or a Hugging Face dataset.

The triplets come from :class:`~elqproj.degradations.DegradationTripletDataset` (crops, flips and both
degradations drawn per item from ``(seed, epoch, index)``); training items also carry the LQ
degradation's parameters (JSON) so that the degrade-back D(ẑ) can reuse them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..degradations import DegradationConfig, DegradationTripletDataset
from ..degradations.dataset import hq_image_tensor
from ..degradations.presets import get_preset
from ..errors import ConfigError, InvalidInputError
from .config import DataSection, HFDatasetSection, TrainingConfig

__all__ = ["degradation_config", "HFTripletDataset", "load_hf_rows", "build_train_dataset", "build_validation_batch"]


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

    Only the row of the item being read is decoded; the constructor reads no image.

    Args:
        rows: indexable rows, e.g. ``datasets.load_dataset(...)``; ``rows[i][image_column]`` is a PIL
            image (the ``Image`` feature), an image path, a numpy array or a ``(3, H, W)`` tensor in
            [0, 1] (see :func:`~elqproj.degradations.dataset.hq_image_tensor`). Every row has the
            same columns: they are checked once, from ``rows.column_names`` (``datasets``) or else
            from the first row.
        image_column: the column holding the HQ image.
        **kwargs: :class:`DegradationTripletDataset` options.

    Raises:
        InvalidInputError: ``rows`` is empty.
        ConfigError: ``image_column`` is not a column of ``rows``.
    """

    def __init__(self, rows: Any, *, image_column: str = "image", **kwargs: Any) -> None:
        if len(rows) == 0:
            raise InvalidInputError("the Hugging Face dataset has no rows; check data.hf_dataset.split / data_files")
        _check_image_column(rows, image_column)
        self.rows = rows
        self.image_column = image_column
        super().__init__(range(len(rows)), **kwargs)

    def load_hq(self, index: int) -> torch.Tensor:
        row = self.images[index]
        return hq_image_tensor(self.rows[row][self.image_column], max_pixels=self.max_pixels,
                               name=f"row {row}, column {self.image_column!r}")


def _check_image_column(rows: Any, image_column: str) -> None:
    columns = getattr(rows, "column_names", None)
    if columns is None:
        columns = list(rows[0])
    if image_column not in columns:
        raise ConfigError(
            f"image column {image_column!r} is not a column of the dataset (columns: {sorted(columns)}); "
            "set data.hf_dataset.image_column to the one holding the HQ images"
        )


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise ConfigError(
            "data.hf_dataset needs the Hugging Face `datasets` package: pip install datasets "
            "(or point data.train at a folder of images)."
        ) from exc
    return datasets


def _is_saved_dataset(path: str, datasets: Any) -> bool:
    """A folder written by ``Dataset.save_to_disk`` (state.json) or ``DatasetDict.save_to_disk``."""
    folder = Path(path)
    return (folder / datasets.config.DATASET_STATE_JSON_FILENAME).is_file() or (
        folder / datasets.config.DATASETDICT_JSON_FILENAME
    ).is_file()


def _unknown_split(spec: HFDatasetSection, available: list[str]) -> ConfigError:
    return ConfigError(
        f"data.hf_dataset.split {spec.split!r} is not a split of {spec.path!r}; "
        f"set data.hf_dataset.split to one of {sorted(available)}"
    )


def _load_saved(spec: HFDatasetSection, datasets: Any) -> Any:
    loader_only = {key: getattr(spec, key) for key in ("name", "revision", "data_dir", "data_files")}
    if given := sorted(key for key, value in loader_only.items() if value is not None):
        raise ConfigError(
            f"data.hf_dataset.path {spec.path!r} is a dataset saved with save_to_disk; "
            f"{', '.join('data.hf_dataset.' + key for key in given)} only apply to load_dataset: remove them"
        )
    loaded = datasets.load_from_disk(spec.path)
    if isinstance(loaded, datasets.DatasetDict):
        if spec.split not in loaded:
            raise _unknown_split(spec, list(loaded))
        return loaded[spec.split]
    return loaded


def _requested_splits(split: str) -> list[str]:
    """``"train[:10%]+test"`` → ``["train", "test"]`` (the ``datasets`` split syntax)."""
    return [part.split("[")[0].strip() for part in split.split("+")]


def _load_with_load_dataset(spec: HFDatasetSection, datasets: Any) -> Any:
    offline = bool(datasets.config.HF_HUB_OFFLINE)
    try:
        return datasets.load_dataset(spec.path, spec.name, data_dir=spec.data_dir, data_files=spec.data_files,
                                     split=spec.split, revision=spec.revision)
    except ConnectionError as err:
        if offline:
            raise ConfigError(
                f"data.hf_dataset.path {spec.path!r} is not in the `datasets` cache and HF_HUB_OFFLINE=1 forbids "
                "downloading it: run once online (or unset HF_HUB_OFFLINE), or save it with save_to_disk where it is "
                "available, copy that folder here and set data.hf_dataset.path to it"
            ) from err
        raise
    except FileNotFoundError as err:
        raise ConfigError(
            f"data.hf_dataset: no dataset found for path {spec.path!r} ({err}); give a Hub dataset id, a builder "
            "such as imagefolder with data_dir or data_files, or a folder written by save_to_disk"
            + (" (HF_HUB_OFFLINE=1: a Hub dataset must already be in the `datasets` cache)" if offline else "")
        ) from err
    except ValueError as err:
        # `datasets` reports an unknown split as a bare ValueError: recognise it by the split names.
        available = _split_names(spec, datasets)
        if available is not None and not set(_requested_splits(spec.split)) <= set(available):
            raise _unknown_split(spec, available) from err
        raise


def _split_names(spec: HFDatasetSection, datasets: Any) -> list[str] | None:
    """The dataset's split names, or None where they cannot be read (they only improve a message)."""
    try:
        return list(datasets.get_dataset_split_names(spec.path, spec.name, data_files=spec.data_files,
                                                     revision=spec.revision, data_dir=spec.data_dir))
    except Exception:
        return None


def load_hf_rows(spec: HFDatasetSection) -> Any:
    """The rows of ``spec``'s split as a ``datasets.Dataset`` reduced to its image column (nothing decoded).

    Raises:
        ConfigError: ``datasets`` is missing, the dataset or split does not exist (the message lists
            the splits), the image column does not exist (the message lists the columns), or the
            dataset is not cached while HF_HUB_OFFLINE=1.
    """
    datasets = _import_datasets()
    if _is_saved_dataset(spec.path, datasets):
        rows = _load_saved(spec, datasets)
    else:
        rows = _load_with_load_dataset(spec, datasets)
    _check_image_column(rows, spec.image_column)
    # Rows are decoded whole: dropping the other columns (captions, other images) saves their decoding.
    return rows.select_columns([spec.image_column])


def _triplets(data: DataSection, *, seed: int, crop: str, return_params: bool, images: str | None = None,
              rows: Any = None) -> DegradationTripletDataset:
    options = dict(crop_size=data.crop_size, crop=crop, seed=seed, return_params=return_params,
                   lq_config=degradation_config(data.lq_degradation),
                   elq_config=degradation_config(data.elq_degradation))
    if rows is not None:
        return HFTripletDataset(rows, image_column=data.hf_dataset.image_column, **options)
    return DegradationTripletDataset(images, **options)


def build_train_dataset(config: TrainingConfig, *, rows: Any = None) -> DegradationTripletDataset:
    """Random-crop triplets with the LQ degradation's parameters (``item["lq_params"]``, JSON).

    ``rows`` replaces loading ``config.data.hf_dataset`` (an already loaded dataset).
    """
    data = config.data
    if data.hf_dataset is not None and rows is None:
        rows = load_hf_rows(data.hf_dataset)
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
        dataset = _triplets(data, seed=seed, crop="center", return_params=False, images=data.validation)
    else:
        if data.hf_dataset is not None and rows is None:
            rows = load_hf_rows(data.hf_dataset)
        dataset = _triplets(data, seed=seed, crop="center", return_params=False, images=data.train, rows=rows)
    # Items depend on (seed, index) only, so the first `count` items are those of a `count`-image dataset.
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    return {key: torch.stack([item[key] for item in items]) for key in ("elq", "lq", "hq")}
