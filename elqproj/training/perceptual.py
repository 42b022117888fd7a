"""LPIPS for the HQ fidelity term, with its backbone weights under the user's control.

The ``lpips`` package gets its backbone (VGG16 / AlexNet / SqueezeNet 1.1) from torchvision, which
downloads the ImageNet weights on first use; its calibrated linear heads ship inside the package.
``backbone="pretrained"`` keeps that behaviour (the file lands in the torch hub cache, ``TORCH_HOME``);
a path loads a torchvision state dict of the backbone from disk (offline machines); ``"random"``
leaves the backbone randomly initialised — the distances are then meaningless, which is only
acceptable for tests and smoke runs.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointMismatchError, ConfigError
from ..hub import load_checkpoint

__all__ = ["load_lpips"]


def _load_backbone(lpips_model: nn.Module, path: Path) -> None:
    """Copy a torchvision ``features.<i>.*`` state dict into lpips' sliced backbone (``slice<k>.<i>.*``)."""
    state = load_checkpoint(path)
    by_index: dict[str, str] = {}
    for name, _ in lpips_model.net.named_parameters():
        _slice, index, leaf = name.split(".", 2)
        by_index[f"features.{index}.{leaf}"] = name
    wanted = {by_index[k]: v for k, v in state.items() if k in by_index}
    missing = sorted(set(by_index.values()) - set(wanted))
    if missing:
        raise CheckpointMismatchError(
            f"{path} is not a torchvision {lpips_model.pnet_type} state dict: {len(missing)} backbone tensors "
            f"missing (e.g. {missing[:3]}); expected keys like {sorted(by_index)[:2]}."
        )
    lpips_model.net.load_state_dict(wanted)


def load_lpips(net: str = "vgg", *, backbone: str | os.PathLike = "pretrained",
               device: torch.device | str = "cpu") -> nn.Module:
    """A frozen LPIPS (v0.1) module: ``lpips(a, b)`` on (B, 3, H, W) in [-1, 1] -> (B, 1, 1, 1) distances.

    Args:
        net: backbone, "vgg" (OSEDiff's training choice), "alex" or "squeeze".
        backbone: "pretrained", a path to the backbone's torchvision state dict, or "random" (tests).
    """
    import lpips

    if net not in ("vgg", "alex", "squeeze"):
        raise ConfigError(f"lpips_net must be 'vgg', 'alex' or 'squeeze', got {net!r}.")
    path = None if backbone in ("pretrained", "random") else Path(os.fspath(backbone))
    if path is not None and not path.is_file():
        raise ConfigError(
            f"lpips_backbone {str(backbone)!r} is neither 'pretrained', 'random' nor an existing file."
        )
    with warnings.catch_warnings():  # lpips still calls torchvision's deprecated `pretrained=` argument
        warnings.filterwarnings("ignore", message=r".*(pretrained|weight enum).*", category=UserWarning)
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=backbone != "pretrained", verbose=False)
    if path is not None:
        _load_backbone(model, path)
    model.requires_grad_(False)
    return model.eval().to(device)
