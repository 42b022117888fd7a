"""Evaluation data: the HQ test images (a folder, a Hugging Face dataset, or a named set), prepared
as the paper prepares them, and their extreme-LQ inputs synthesised once, seeded, and kept on disk.

The paper's protocol (Section 5.1): the DIV2K *train* (800) and DIV8K *train* (1,500) images, short
side resized to 512 and centre-cropped to 512 × 512, then degraded with the widened Real-ESRGAN
degradation (our ``elq`` preset). Every method then reads the same ELQ files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import imageio
from ..degradations import DegradationConfig, DegradationPipeline
from ..degradations.dataset import center_crop_resized, hq_image_tensor
from ..errors import ConfigError, InvalidInputError
from ..seeding import file_seed

__all__ = ["NAMED_DATASETS", "EvalImage", "open_dataset", "prepare_hq", "EvalInputs", "synthesize_inputs",
           "save_png", "load_png"]


@dataclass(frozen=True)
class NamedDataset:
    """A test set known by name: where it comes from and what the paper used it for."""

    description: str
    data_files: str | None  # a zip of the HQ images, read by the ``datasets`` imagefolder builder
    missing: str = ""  # how to get it when there is no public download


NAMED_DATASETS: dict[str, NamedDataset] = {
    "div2k-train": NamedDataset(
        "DIV2K training HR images (800; the paper's Table 1 test set)",
        "https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_train_HR.zip",
    ),
    "div2k-valid": NamedDataset(
        "DIV2K validation HR images (100; not the paper's protocol, a common smaller check)",
        "https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_valid_HR.zip",
    ),
    "div8k-train": NamedDataset(
        "DIV8K training images (1,500; the paper's Table 2 test set)",
        None,
        missing="DIV8K has no public download address (it is handed out for the NTIRE/AIM challenges): get its "
                "1,500 training images and pass their folder as --data (or data: in the config)",
    ),
}


@dataclass(frozen=True)
class EvalImage:
    """One HQ test image: a file-safe ``name`` and a loader returning float32 ``(1, 3, H, W)`` in [0, 1]."""

    name: str
    load: Callable[[], torch.Tensor]


def _folder_images(folder: Path, max_pixels: int | None) -> list[EvalImage]:
    paths = imageio.expand_image_paths([folder])
    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems:
            raise InvalidInputError(f"{stems[path.stem]} and {path} share the name {path.stem!r}; rename one of them")
        stems[path.stem] = path
    return [EvalImage(path.stem, lambda path=path: hq_image_tensor(path, max_pixels=max_pixels, name=str(path)))
            for path in paths]


def _row_images(rows: Any, column: str, prefix: str, max_pixels: int | None) -> list[EvalImage]:
    width = max(4, len(str(len(rows))))

    def load(index: int) -> torch.Tensor:
        return hq_image_tensor(rows[index][column], max_pixels=max_pixels, name=f"{prefix} row {index}")

    # Rows have no file names: number them from 1, as DIV2K numbers its files (0001.png …).
    return [EvalImage(f"{index + 1:0{width}d}", lambda index=index: load(index)) for index in range(len(rows))]


def open_dataset(source: str | os.PathLike, *, split: str = "train", image_column: str = "image",
                 limit: int | None = None, max_pixels: int | None = None) -> list[EvalImage]:
    """The HQ test images of ``source``, in a fixed order (sorted files, or dataset row order).

    Args:
        source: a folder of images; a name from :data:`NAMED_DATASETS` (``div2k-train``, …; downloaded
            and cached by ``datasets``); or a Hugging Face dataset id / ``save_to_disk`` folder (read with
            ``datasets``; ``split`` and ``image_column`` pick the rows and the image column).
        limit: keep the first ``limit`` images (e.g. a quick run on 10 images).
        max_pixels: decompression-bomb limit per image (see :mod:`elqproj.imageio`).

    Raises:
        InvalidInputError: no images, two files with one name, ``limit`` below 1.
        ConfigError: an unknown dataset, a missing split or column, a named set without a public
            download, or a dataset not cached while offline.
    """
    from ..training.config import HFDatasetSection
    from ..training.data import load_hf_rows

    if limit is not None and limit < 1:
        raise InvalidInputError(f"limit must be at least 1 image, got {limit}")
    text = os.fspath(source)
    folder = Path(text).expanduser()
    if folder.is_dir() and not (folder / "state.json").is_file() and not (folder / "dataset_dict.json").is_file():
        images = _folder_images(folder, max_pixels)
    elif text.lower() in NAMED_DATASETS:
        named = NAMED_DATASETS[text.lower()]
        if named.data_files is None:
            raise ConfigError(f"{text}: {named.missing}")
        rows = load_hf_rows(HFDatasetSection(path="imagefolder", data_files=named.data_files, split="train"))
        images = _row_images(rows, "image", text, max_pixels)
    elif "/" in text or folder.is_dir():
        rows = load_hf_rows(HFDatasetSection(path=text, split=split, image_column=image_column))
        images = _row_images(rows, image_column, text, max_pixels)
    else:
        raise ConfigError(
            f"data {text!r} is not a folder, a Hugging Face dataset id (org/name) or a known test set "
            f"({', '.join(NAMED_DATASETS)})"
        )
    if not images:
        raise InvalidInputError(f"no images found in {text}")
    return images[:limit] if limit is not None else images


def prepare_hq(image: torch.Tensor, size: int = 512) -> torch.Tensor:
    """The paper's test crop: shorter side resized to ``size`` (bicubic, antialiased), then the centre
    ``size`` × ``size`` crop. ``(1, 3, H, W)`` in [0, 1] → ``(1, 3, size, size)`` on the 1/255 grid
    (what the saved 8-bit PNG holds); ``size=0`` keeps the image as it is."""
    if size < 0:
        raise InvalidInputError(f"size must be a pixel count >= 0 (0: keep the images as they are), got {size}")
    if size:
        image = center_crop_resized(image, size)
    return (image.clamp(0, 1) * 255).round() / 255


def save_png(image: torch.Tensor, path: Path) -> Path:
    """Write ``(1, 3, H, W)`` float in [0, 1] as an 8-bit RGB PNG (rounded), atomically."""
    height, width = image.shape[-2:]
    meta = imageio.ImageMeta(kind="pil", batched=False, size=(height, width), mode="RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    return imageio.save_image(imageio.from_tensor(image.detach().float().cpu(), meta), path)


def load_png(path: Path) -> torch.Tensor:
    """An image file as float32 ``(1, 3, H, W)`` in [0, 1]."""
    return imageio.to_tensor(imageio.load_image(path))[0]


@dataclass(frozen=True)
class EvalInputs:
    """The prepared inputs of an evaluation folder: ``hq/<name>.png`` (ground truth) and
    ``elq/<name>.png`` with ``elq/<name>.json`` (seed and the sampled degradation parameters)."""

    root: Path
    names: tuple[str, ...]

    @property
    def hq_dir(self) -> Path:
        return self.root / "hq"

    @property
    def elq_dir(self) -> Path:
        return self.root / "elq"

    def hq(self, name: str) -> Path:
        return self.hq_dir / f"{name}.png"

    def elq(self, name: str) -> Path:
        return self.elq_dir / f"{name}.png"

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)


RECIPE_NAME = "recipe.json"


def synthesize_inputs(images: list[EvalImage], root: Path, *, degradation: DegradationConfig, seed: int,
                      size: int = 512, progress: bool = True) -> EvalInputs:
    """Prepare every HQ image and degrade it once into ``root`` (reused by every method and rerun).

    Each image's degradation is drawn from :func:`~elqproj.seeding.file_seed` of ``seed`` and its name,
    so the same seed gives the same bytes whatever images run with it. Images already written are
    skipped, so an interrupted run resumes. ``root/recipe.json`` records the degradation, seed and size;
    a folder made with another recipe is refused rather than mixed.

    Raises:
        ConfigError: ``root`` holds inputs made with another degradation, seed or size.
    """
    recipe = {"degradation": degradation.model_dump(mode="json"), "seed": seed, "size": size}
    recipe_path = root / RECIPE_NAME
    if recipe_path.is_file():
        recorded = json.loads(recipe_path.read_text())
        if recorded != recipe:
            changed = sorted(key for key in recipe if recorded.get(key) != recipe[key])
            raise ConfigError(
                f"{root} holds inputs made with another {', '.join(changed)}; use another output folder (or delete "
                f"{root}) so that every method of one evaluation reads the same inputs"
            )
    root.mkdir(parents=True, exist_ok=True)
    recipe_path.write_text(json.dumps(recipe, indent=2))
    inputs = EvalInputs(root, tuple(image.name for image in images))
    pipeline = DegradationPipeline(degradation)
    for image in tqdm(images, desc="inputs", unit="img", disable=not progress):
        record = inputs.elq(image.name).with_suffix(".json")
        if inputs.hq(image.name).is_file() and inputs.elq(image.name).is_file() and record.is_file():
            continue
        hq = prepare_hq(image.load(), size)
        image_seed = file_seed(seed, image.name)
        elq, params = pipeline(hq, generator=torch.Generator().manual_seed(image_seed))
        save_png(hq, inputs.hq(image.name))
        save_png(elq, inputs.elq(image.name))
        # Written last: its presence says both images are complete.
        record.write_text(json.dumps({"seed": image_seed, "params": params.model_dump(mode="json")}, indent=2))
    return inputs
