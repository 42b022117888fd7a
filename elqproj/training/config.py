"""The training configuration: a pydantic model loaded from YAML, with dotted command-line overrides.

>>> cfg = load_config("configs/irib_osediff.yaml", overrides=["training.max_steps=1000", "data.batch_size=2"])

Defaults are the paper's where it gives them (LoRA rank 4, lr 5e-5, λ_blur 0.5, prompt dropout 0.3,
512 crops) and OSEDiff's training recipe otherwise (λ_l2 1, λ_LPIPS 2 with VGG, λ_VSD 1, CFG 7.5 on the
frozen UNet, VSD timesteps 20-979, AdamW β (0.9, 0.999), weight decay 1e-2, ε 1e-8, gradient clipping
1.0, constant learning rate). Values marked *ours* below are neither (the paper does not state them).
Relative paths are relative to the working directory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from ..errors import ConfigError
from ..validation import ConfigModel
from ..onestep import SD21_BASE

__all__ = [
    "TrainingConfig",
    "ProjectorSection",
    "RestorerSection",
    "PromptSection",
    "DataSection",
    "HFDatasetSection",
    "LossSection",
    "OptimizerSection",
    "RunSection",
    "load_config",
    "validate_config",
    "OSEDIFF_NEGATIVE_PROMPT",
]


#: The negative prompt OSEDiff's training data emits for the VSD guidance (official dataset, unchanged).
OSEDIFF_NEGATIVE_PROMPT = (
    "painting, oil painting, illustration, drawing, art, sketch, cartoon, CG Style, 3D render, unreal engine, "
    "blurring, dirty, messy, worst quality, low quality, frames, watermark, signature, jpeg artifacts, deformed, "
    "lowres, over-smooth"
)


class _Section(ConfigModel):
    """A config section: no unknown keys, immutable; bad values raise ConfigError naming the field."""


class ProjectorSection(_Section):
    """f: a fresh projector on ``base_model`` (LoRA B = 0), or ``init_from`` a saved one."""

    lora_rank: int = Field(4, ge=1)
    lora_alpha: float = Field(8.0, gt=0)  # OSEDiff's implicit peft default: scaling 8 / rank
    init_from: str | None = None


class RestorerSection(_Section):
    """g: a registered restorer whose capabilities say ``differentiable`` (OSEDiff, S3Diff, …).

    ``base_model`` defaults to the run's ``base_model`` when g uses SD2.1-base, else to g's own
    default. ``options`` go to the restorer's ``from_pretrained`` (e.g. ``de_net`` for S3Diff).
    """

    name: str = "osediff"
    weights: str | None = None
    base_model: str | None = None
    revision: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class PromptSection(_Section):
    """Training prompts: a tagger on one of the item's images, replaced by "" with p = ``dropout``.

    ``extractor``: a registered prompt extractor ("ram" — OSEDiff's training tagger — "dape", "vlm",
    "none") or "fixed" with ``text``. ``image``: the image the tagger sees ("hq" as in OSEDiff's
    recipe, or "lq" / "elq"). ``negative_prompt`` is only used by the VSD guidance of the frozen UNet.
    """

    extractor: str = "ram"
    weights: str | None = None
    text: str | None = None
    image: Literal["hq", "lq", "elq"] = "hq"
    dropout: float = Field(0.3, ge=0.0, le=1.0)
    negative_prompt: str = OSEDIFF_NEGATIVE_PROMPT

    @model_validator(mode="after")
    def _fixed_needs_text(self) -> PromptSection:
        if (self.extractor == "fixed") != (self.text is not None):
            raise ValueError("prompts.text is required with extractor 'fixed' and only allowed with it")
        return self


class HFDatasetSection(_Section):
    """HQ images from a Hugging Face ``datasets`` dataset (``pip install datasets``), read lazily.

    ``path`` is one of
      * a Hub dataset id (``org/name``; ``name`` picks its configuration, ``revision`` a branch, tag
        or commit; offline runs need it in the ``datasets`` cache already),
      * a builder over local files: ``path: imagefolder`` with ``data_dir`` (a folder of images,
        searched recursively) or ``data_files`` (a file or glob, a list of them, or
        ``{split: files}``) — all of these go to ``datasets.load_dataset`` unchanged,
      * a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, read with
        ``datasets.load_from_disk`` (``name``, ``revision``, ``data_dir`` and ``data_files`` do not
        apply to it).

    ``split``: the split to train on; with ``load_dataset`` also a slice such as ``train[:1000]``. A
    saved ``DatasetDict`` takes a split name; a saved single ``Dataset`` is used whole.
    ``image_column``: the column holding the HQ images (an ``Image`` feature, image file paths, or
    float tensors in [0, 1]); only this column is read.
    """

    path: str
    name: str | None = None
    split: str = "train"
    image_column: str = "image"
    revision: str | None = None
    data_dir: str | None = None
    data_files: str | list[str] | dict[str, str | list[str]] | None = None


class DataSection(_Section):
    """(ELQ, LQ, HQ) crops made on the fly from HQ images (a folder/glob, or a ``datasets`` dataset).

    ``lq_degradation`` / ``elq_degradation``: a preset name ("osediff", "realesrgan", "elq") or a
    mapping ``{preset: <name>, <field>: <override>, …}`` merged into that preset (nested fields as
    nested mappings), e.g. ``{preset: elq, final_scale: [4, 4]}``. ``validation``: HQ images for the
    periodic validation grid (centre crops); default: the first training images.
    """

    train: str | None = None
    hf_dataset: HFDatasetSection | None = None
    validation: str | None = None
    crop_size: int = Field(512, ge=64)
    lq_degradation: str | dict[str, Any] = "osediff"
    elq_degradation: str | dict[str, Any] = "elq"
    batch_size: int = Field(4, ge=1)
    num_workers: int = Field(4, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> DataSection:
        if (self.train is None) == (self.hf_dataset is None):
            raise ValueError("set exactly one of data.train (a folder or glob of HQ images) and data.hf_dataset")
        return self


class LossSection(_Section):
    """Weights and shapes of every loss term (see :mod:`elqproj.losses`).

    ``degrade_back``: "same" applies to ẑ the degradation parameters that made the LQ target (noise
    seeds included); "resample" draws fresh ones from ``data.lq_degradation`` every step.
    ``lpips_backbone``: "pretrained" (torchvision's ImageNet weights: downloaded once into the torch
    hub cache), a path to a torchvision state dict of that network (offline machines), or "random"
    (meaningless distances: **only** for tests and smoke runs). Blur sigmas and λ_LQ are *ours*.
    """

    lambda_lq: float = Field(1.0, ge=0)
    lq_blur_sigma: float = Field(2.0, gt=0)
    lq_blur_kernel_size: int | None = None
    degrade_back: Literal["same", "resample"] = "same"
    lambda_vsd: float = Field(1.0, ge=0)
    lambda_vsd_lora: float = Field(1.0, ge=0)
    cfg_vsd: float = 7.5
    vsd_timesteps: tuple[int, int] = (20, 980)
    lambda_l2: float = Field(1.0, ge=0)
    lambda_lpips: float = Field(1.0, ge=0)  # the paper's λ_LPIPS (Appendix A); OSEDiff's own recipe uses 2
    lambda_blur: float = Field(0.5, ge=0)
    hq_blur_sigma: float = Field(2.0, gt=0)
    hq_blur_kernel_size: int | None = None
    lpips_net: Literal["vgg", "alex", "squeeze"] = "vgg"
    lpips_backbone: str = "pretrained"

    @model_validator(mode="after")
    def _timesteps(self) -> LossSection:
        low, high = self.vsd_timesteps
        if not 0 <= low < high <= 1000:
            raise ValueError(f"loss.vsd_timesteps must be [low, high) with 0 <= low < high <= 1000, got {self.vsd_timesteps}")
        return self


class OptimizerSection(_Section):
    """AdamW for f (and a second one for the VSD regulariser), with a diffusers learning-rate schedule."""

    learning_rate: float = Field(5e-5, gt=0)
    regularizer_learning_rate: float | None = Field(None, gt=0)  # None: learning_rate
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = Field(1.0, gt=0)
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = Field(0, ge=0)


class RunSection(_Section):
    """Length, precision, memory savers, checkpoints, validation and logging.

    ``mixed_precision``: "bf16" (default; use "fp16" on GPUs without bf16, "no" on CPUs) — the frozen
    networks are held in that dtype, the trained parameters in float32. Steps count optimiser updates
    (``gradient_accumulation_steps`` batches each).
    """

    max_steps: int = Field(100_000, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    mixed_precision: Literal["no", "fp16", "bf16"] = "bf16"
    gradient_checkpointing: bool = True
    allow_tf32: bool = True
    checkpoint_every: int = Field(500, ge=1)
    checkpoints_total_limit: int | None = Field(None, ge=1)
    validate_every: int = Field(500, ge=1)
    num_validation_images: int = Field(4, ge=0)
    validation_metrics: list[str] = Field(default_factory=lambda: ["psnr", "ssim"])
    log_every: int = Field(10, ge=1)
    log_with: list[Literal["tensorboard", "wandb"]] = Field(default_factory=lambda: ["tensorboard"])
    tracker_project: str = "elqproj-irib"

    @field_validator("validation_metrics")
    @classmethod
    def _per_image_metrics(cls, names: list[str]) -> list[str]:
        from ..evaluation.metrics import metric_specs

        if sets := [spec.name for spec in metric_specs(names) if spec.kind == "set"]:
            raise ValueError(f"{', '.join(sets)} compares whole sets; a validation batch of a few images gives no "
                             "meaningful value: use per-image metrics (psnr, ssim, lpips, dists, niqe, musiq, clipiqa)")
        return names


class TrainingConfig(_Section):
    """Everything a training run needs; ``elqproj train --config X.yaml`` reads one.

    ``mode``: "irib" trains a projector f in front of the frozen restorer g; "finetune_restorer" is
    the paper's baseline: g itself (OSEDiff) fine-tuned ELQ → HQ with the same data and losses.
    """

    mode: Literal["irib", "finetune_restorer"] = "irib"
    output_dir: str = "runs/irib-osediff"
    seed: int = 123
    base_model: str = SD21_BASE
    base_revision: str | None = None
    projector: ProjectorSection = Field(default_factory=ProjectorSection)
    restorer: RestorerSection = Field(default_factory=RestorerSection)
    prompts: PromptSection = Field(default_factory=PromptSection)
    data: DataSection
    loss: LossSection = Field(default_factory=LossSection)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    training: RunSection = Field(default_factory=RunSection)

    @model_validator(mode="after")
    def _baseline_is_osediff(self) -> TrainingConfig:
        if self.mode == "finetune_restorer" and self.restorer.name.lower() != "osediff":
            raise ValueError(
                f"mode 'finetune_restorer' saves OSEDiff checkpoints; restorer.name must be 'osediff', got {self.restorer.name!r}"
            )
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"Cannot set {dotted!r}: {key!r} is {child!r}, not a section.")
        node = child
    node[keys[-1]] = value


def _parse_overrides(overrides: Mapping[str, Any] | Sequence[str] | None) -> dict[str, Any]:
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    parsed = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"Override {item!r} must look like section.key=value (e.g. training.max_steps=100).")
        parsed[key.strip()] = yaml.safe_load(text) if text.strip() else None
    return parsed


def validate_config(data: Mapping[str, Any], *, source: str = "config") -> TrainingConfig:
    """Validate a config mapping; problems raise :class:`ConfigError` naming each bad field."""
    try:
        return TrainingConfig.model_validate(dict(data))
    except ConfigError as exc:
        raise ConfigError(f"Invalid training {source}: {exc}") from None


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
) -> TrainingConfig:
    """Read a YAML training config and apply overrides.

    Args:
        path: a YAML file (``None``: start from the defaults; ``data`` must then come from overrides).
        overrides: ``{"training.max_steps": 10}`` or ``["training.max_steps=10", …]`` (values parsed as
            YAML, so ``=10`` is an int and ``=null`` is None).
    """
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        try:
            loaded = yaml.safe_load(file.read_text())
        except OSError as exc:
            raise ConfigError(f"Cannot read the training config {file}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{file} must hold a mapping of config sections, got {type(loaded).__name__}.")
        data = loaded or {}
    for key, value in _parse_overrides(overrides).items():
        _set_dotted(data, key, value)
    return validate_config(data, source=str(path) if path is not None else "config")
