"""Reading the official SeeSR folders (``seesr/unet``, ``seesr/controlnet``) into the SeeSR networks.

Both folders are diffusers ``save_pretrained`` output: ``config.json`` (with
``"use_image_cross_attention": true``) and ``diffusion_pytorch_model.safetensors`` (or ``.bin``).
The UNet file comes in two forms, both accepted:

* the released file: the full UNet (SD-2-base weights + ``image_attentions``), as ``test_seesr.py`` reads it;
* only the ``*image_attentions*`` tensors, to be laid over the base model's UNet, as the official turbo
  loader (``UNet2DConditionModel.from_pretrained_orig``) reads it. SeeSR training freezes every other
  UNet weight, so both forms give the same network.

Tensors are read without executing code (:func:`elqproj.hub.load_checkpoint`) and must match the
network built from ``config.json`` key for key and shape for shape; anything else raises
:class:`~elqproj.errors.CheckpointMismatchError` naming the offending keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from elqproj.errors import CheckpointMismatchError, WeightsNotFoundError
from elqproj.hub import load_checkpoint

from .models import SeeSRControlNetModel, SeeSRUNet2DConditionModel

__all__ = ["WEIGHTS_NAMES", "load_seesr_unet", "load_seesr_controlnet", "is_image_attention_only"]

#: Weight file names diffusers writes, in order of preference.
WEIGHTS_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_IMAGE_ATTENTION_KEY = "image_attentions."

ModelT = TypeVar("ModelT", bound=nn.Module)


def _weights_file(folder: Path) -> Path:
    for name in WEIGHTS_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise WeightsNotFoundError(
        f"{folder} has no {' or '.join(WEIGHTS_NAMES)}. Pass the SeeSR folder that holds unet/ and "
        "controlnet/ as written by the official release (preset/models/seesr)."
    )


def _read_config(folder: Path, what: str) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise WeightsNotFoundError(f"{path} is missing: {folder} is not a diffusers {what} folder.") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointMismatchError(f"{path} is not valid JSON ({exc}).") from exc
    if not config.get("use_image_cross_attention", False):
        raise CheckpointMismatchError(
            f"{path} does not set use_image_cross_attention: {folder} holds a plain Stable Diffusion "
            f"{what}, not SeeSR's. Pass the SeeSR release folder (with unet/ and controlnet/)."
        )
    return config


def is_image_attention_only(state: dict[str, Any]) -> bool:
    """True for the turbo-loader form of the UNet file: every key belongs to an ``image_attentions`` list."""
    return bool(state) and all(_IMAGE_ATTENTION_KEY in key for key in state)


def _examples(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (f" … ({len(keys)} in all)" if len(keys) > 4 else "")


def _build_and_load(cls: type[ModelT], config: dict[str, Any], state: dict[str, Any], source: str) -> ModelT:
    """Build ``cls`` from ``config`` without allocating random weights, then take ``state``'s tensors.

    Raises :class:`CheckpointMismatchError` when a key is missing or unexpected or a shape differs.
    """
    with torch.device("meta"):  # parameters are replaced by the checkpoint's: skip the random init
        model = cls.from_config(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or wrong_shape:
        parts = [f"{label}: {_examples(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)) if keys]
        raise CheckpointMismatchError(
            f"{source} does not fit {cls.__name__} built from its config.json ({'; '.join(parts)}). "
            "Is this the SeeSR release for the same Stable Diffusion base?"
        )
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def load_seesr_unet(seesr_dir: Path, base_unet_dir: Callable[[], Path] | None) -> SeeSRUNet2DConditionModel:
    """The SeeSR UNet from ``seesr_dir/unet``, in the checkpoint's dtype on the CPU.

    Args:
        seesr_dir: the SeeSR folder (holding ``unet/`` and ``controlnet/``).
        base_unet_dir: returns the base model's ``unet/`` folder; called only when the SeeSR UNet file
            holds just the image attentions (so the 3.5 GB base UNet is fetched only when needed).
    """
    folder = seesr_dir / "unet"
    config = _read_config(folder, "UNet")
    weights = _weights_file(folder)
    state = load_checkpoint(weights)
    source = str(weights)
    if is_image_attention_only(state):
        if base_unet_dir is None:
            raise WeightsNotFoundError(
                f"{weights} holds only the image-attention tensors; pass base_model= (the Stable Diffusion "
                "2 base folder or Hub id) so that the rest of the UNet can be read from it."
            )
        base_weights = _weights_file(base_unet_dir())
        base_state = load_checkpoint(base_weights)
        if any(_IMAGE_ATTENTION_KEY in key for key in base_state):
            raise CheckpointMismatchError(f"{base_weights} already holds image attentions: it is not a base UNet.")
        state = {**base_state, **state}
        source = f"{base_weights} + the image attentions of {weights}"
    return _build_and_load(SeeSRUNet2DConditionModel, config, state, source)


def load_seesr_controlnet(seesr_dir: Path) -> SeeSRControlNetModel:
    """The SeeSR ControlNet from ``seesr_dir/controlnet``, in the checkpoint's dtype on the CPU."""
    folder = seesr_dir / "controlnet"
    config = _read_config(folder, "ControlNet")
    weights = _weights_file(folder)
    return _build_and_load(SeeSRControlNetModel, config, load_checkpoint(weights), str(weights))
