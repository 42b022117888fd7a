"""Degrade image files to a folder (what ``elqproj degrade`` runs)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from .. import imageio
from ..imageio import expand_image_paths
from ..errors import ElqprojError, InvalidInputError
from ..seeding import file_seed
from .config import DegradationConfig
from .pipeline import DegradationPipeline
from .presets import get_preset

__all__ = ["degrade_files"]


def _to_pil(image: torch.Tensor) -> Image.Image:
    # The LQ lies on the 1/255 grid, so this conversion to 8 bits is exact.
    array = (image[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, mode="RGB")


def degrade_files(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    config: DegradationConfig | str = "elq",
    seed: int = 0,
    scale: int | None = None,
    save_params: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    on_error: Callable[[Path, Exception], None] | None = None,
) -> list[Path]:
    """Degrade every image of ``inputs`` and write ``<output_dir>/<stem>.png``.

    Args:
        inputs: image files, folders (their images) or glob patterns, one or a list.
        output_dir: folder for the results (created).
        config: a :class:`DegradationConfig` or a preset name (``"realesrgan"``, ``"osediff"``,
            ``"elq"``).
        seed: base seed; each image's seed is :func:`~elqproj.seeding.file_seed` of it and the file name.
        scale: fixed final down-scale factor (overrides the config's ``final_scale`` range).
        save_params: also write ``<stem>.json`` with the source path, the seed, the config and the
            sampled params; ``DegradationParams.model_validate(data["params"])`` and
            :meth:`DegradationPipeline.apply` reproduce the image (on the same device type: noise
            draws are device-dependent).
        device: where the degradation runs.
        progress: show a tqdm progress bar.
        on_error: called with the path and the error when an image fails (unreadable, too small, an
            output that would overwrite its input, a write error); the other images are still
            degraded. ``None``: the first failure raises.

    Returns:
        The written image paths, in input order.

    Raises:
        InvalidInputError: no images found, two inputs with the same file stem, an unreadable file,
            or an image too small for the degradation.
        ConfigError: an invalid config or scale.
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    paths = expand_image_paths([os.fspath(item) for item in items])
    if not paths:
        raise InvalidInputError(f"no images found in {inputs!r}")
    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems:
            raise InvalidInputError(
                f"{stems[path.stem]} and {path} would both be written as {path.stem}.png; rename one of them"
            )
        stems[path.stem] = path
    if isinstance(config, str):
        config = get_preset(config)
    if scale is not None:
        config = config.model_copy(update={"final_scale": (scale, scale)})
    pipeline = DegradationPipeline(config)  # validates the (possibly updated) config
    output_dir = Path(output_dir)
    written = []
    for path in tqdm(paths, desc=f"degrade ({pipeline.config.name})", unit="img", disable=not progress):
        target = output_dir / f"{path.stem}.png"
        try:
            if target.resolve() == path.resolve():
                raise InvalidInputError(f"{target} is the input itself: choose another output folder")
            image, _ = imageio.to_tensor(imageio.load_image(path))
            per_image_seed = file_seed(seed, path)
            lq, params = pipeline(image.to(device), generator=torch.Generator().manual_seed(per_image_seed))
            written.append(imageio.save_image(_to_pil(lq), target))
            if save_params:
                record = {
                    "source": str(path),
                    "seed": per_image_seed,
                    "config": pipeline.config.model_dump(mode="json"),
                    "params": params.model_dump(mode="json"),
                }
                target.with_suffix(".json").write_text(json.dumps(record, indent=2))
        except (ElqprojError, OSError) as exc:
            if on_error is None:
                raise
            on_error(path, exc)
    return written
