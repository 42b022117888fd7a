"""S3Diff's degradation estimator: a small residual CNN that scores how degraded an LQ image is.

The network is MM-RealSR's ``DEResNet`` as S3Diff ships it (``assets/mm-realsr/de_net.pth``): one
independent branch per degradation type (two: blur and noise), each

    conv3x3(3→64) → 6 × residual block(64) → conv3x3(64→128, stride 2) → 2 × residual block(128)
    → global average pool → Linear(128→512) → ReLU → Linear(512→1) → sigmoid

where a residual block is ``x + conv3x3(relu(conv3x3(x)))`` (no normalisation). Parameter names
follow the official state dict (``conv_first.i``, ``body.i.k``, ``fc_degree.i.k``) so ``de_net.pth``
loads strictly. Written here because no library ships this architecture.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from elqproj.errors import CheckpointMismatchError, InvalidInputError
from elqproj.hub import load_checkpoint

__all__ = ["DegradationEstimator", "ResidualBlockNoBN"]


class ResidualBlockNoBN(nn.Module):
    """``x + conv2(relu(conv1(x)))`` with 3x3 convolutions and no normalisation."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


def _branch_body(stage_channels: Sequence[int], blocks_per_stage: Sequence[int], downscales: Sequence[int]) -> nn.Sequential:
    """Residual stages; a stride-2 conv closes a downscaling stage, a stride-1 conv a widening one."""
    layers: list[nn.Module] = []
    for stage, (channels, blocks, down) in enumerate(zip(stage_channels, blocks_per_stage, downscales)):
        layers += [ResidualBlockNoBN(channels) for _ in range(blocks)]
        following = stage_channels[min(stage + 1, len(stage_channels) - 1)]
        if down == 2:
            layers.append(nn.Conv2d(channels, following, 3, 2, 1))
        elif down == 1:
            if following != channels:
                layers.append(nn.Conv2d(channels, following, 3, 1, 1))
        else:
            raise InvalidInputError(f"downscales entries must be 1 or 2, got {down}.")
    return nn.Sequential(*layers)


class DegradationEstimator(nn.Module):
    """Per-image degradation scores (B, num_degradations) in (0, 1) from an LQ image.

    Args:
        in_channels: image channels (3).
        num_degradations: independent branches / scores (2 in S3Diff: blur, noise).
        stage_channels, blocks_per_stage, downscales: the residual trunk (official defaults
            ``[64, 64, 64, 128]``, ``[2, 2, 2, 2]``, ``[1, 1, 2, 1]``, hard-coded by the S3Diff scripts).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_degradations: int = 2,
        stage_channels: Sequence[int] = (64, 64, 64, 128),
        blocks_per_stage: Sequence[int] = (2, 2, 2, 2),
        downscales: Sequence[int] = (1, 1, 2, 1),
    ) -> None:
        super().__init__()
        if not len(stage_channels) == len(blocks_per_stage) == len(downscales):
            raise InvalidInputError("stage_channels, blocks_per_stage and downscales must have the same length.")
        self.conv_first = nn.ModuleList(
            nn.Conv2d(in_channels, stage_channels[0], 3, 1, 1) for _ in range(num_degradations)
        )
        self.body = nn.ModuleList(
            _branch_body(stage_channels, blocks_per_stage, downscales) for _ in range(num_degradations)
        )
        self.fc_degree = nn.ModuleList(
            nn.Sequential(nn.Linear(stage_channels[-1], 512), nn.ReLU(), nn.Linear(512, 1), nn.Sigmoid())
            for _ in range(num_degradations)
        )

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs) -> DegradationEstimator:
        """Build the official-size estimator and load ``de_net.pth`` strictly, without executing code.

        Raises:
            CheckpointMismatchError: the file is not a DEResNet state dict of this shape.
            UnsafeCheckpointError: the pickle references code (see :func:`elqproj.hub.load_checkpoint`).
        """
        model = cls(**kwargs)
        state = load_checkpoint(path)
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(k for k in own if k in state and
                       (not isinstance(state[k], torch.Tensor) or state[k].shape != own[k].shape))
        if missing or unexpected or wrong:
            raise CheckpointMismatchError(
                f"{path} is not an S3Diff degradation-estimator (DEResNet) state dict: "
                f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                f"(e.g. {unexpected[:3]}), {len(wrong)} with the wrong shape (e.g. {wrong[:3]}). "
                "Pass the de_net.pth shipped in the S3Diff repository (assets/mm-realsr/de_net.pth)."
            )
        model.load_state_dict(state, strict=True)
        return model.eval().requires_grad_(False)

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, num_degradations)`` in (0, 1) for ``lq`` (B, 3, h, w) in [0, 1] at its own
        (not upscaled) resolution."""
        scores = []
        for conv_first, body, head in zip(self.conv_first, self.body, self.fc_degree):
            features = body(conv_first(lq)).mean(dim=(-2, -1))  # global average pool
            scores.append(head(features).squeeze(-1))
        return torch.stack(scores, dim=1)
