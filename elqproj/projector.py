"""The Projector f: a one-step SD2.1 + LoRA network that lifts an extreme-LQ image onto the LQ manifold.

f has OSEDiff's architecture (IRIB paper, Sec. 3): LoRA (rank 4 by default) on the VAE encoder and the
UNet, optionally a fully trained UNet ``conv_in``, one UNet evaluation at t = 999 conditioned on a
prompt, ε→x0, VAE decode. Input and output have the same size. It runs on a
:class:`~elqproj.onestep.OneStepSD` engine that it may share with the OSEDiff restorer.

A saved projector is a directory::

    config.json              ProjectorConfig (base model id + revision, LoRA rank/alpha/targets, …)
    projector.safetensors    LoRA tensors ("unet.<module>.lora_A.weight", …) and full weights ("unet.conv_in.weight")
    README.md                model card
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator
from safetensors.torch import save_file

from . import __version__, imageio
from .errors import CheckpointMismatchError, ConfigError
from .hub import WeightsSpec, load_checkpoint, resolve_dir
from .onestep import SD21_BASE, OneStepOutput, OneStepSD, prompts_for_batch
from .validation import ConfigModel
from .value_range import signed_to_unit, unit_to_signed

__all__ = ["Projector", "ProjectorConfig", "SD21_BASE"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "projector.safetensors"

#: OSEDiff's LoRA targets (osediff.py initialize_unet / initialize_vae), as peft target specs: the
#: projector's defaults (f is OSEDiff-shaped).
OSEDIFF_UNET_TARGETS = [
    "to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut",
    "conv_out", "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj",
]
OSEDIFF_VAE_TARGETS = r"^(encoder\..*(conv1|conv2|conv_in|conv_shortcut|conv|conv_out|to_k|to_q|to_v|to_out\.0)|quant_conv)$"
_instances = itertools.count()


class ProjectorConfig(ConfigModel):
    """Everything that defines a projector's shape; saved as config.json and round-trips.

    Attributes:
        base_model: Hub id or path of the SD2.1-style base the LoRA was trained on.
        base_revision: Hub revision of the base (None = main).
        lora_rank / lora_alpha: LoRA rank and alpha (scaling alpha/rank; OSEDiff's implicit alpha is 8).
        unet_target_modules / vae_target_modules: peft target specs (list of name suffixes, or a regex).
        full_weights: base parameters trained in full and stored in the projector (OSEDiff trains
            the UNet conv_in), as "unet.<param>" / "vae.<param>".
        timestep: the fixed UNet timestep (999 as in OSEDiff).
    """

    base_model: str = SD21_BASE
    base_revision: str | None = None
    lora_rank: int = Field(4, ge=1, le=1024)
    lora_alpha: float = Field(8.0, gt=0)
    unet_target_modules: list[str] | str = Field(default_factory=lambda: list(OSEDIFF_UNET_TARGETS))
    vae_target_modules: list[str] | str = OSEDIFF_VAE_TARGETS
    full_weights: list[str] = Field(default_factory=lambda: ["unet.conv_in.weight", "unet.conv_in.bias"])
    timestep: int = Field(999, ge=0, le=999)
    elqproj_version: str = __version__

    @field_validator("full_weights")
    @classmethod
    def _components(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if v.split(".", 1)[0] not in ("unet", "vae") or "." not in v]
        if bad:
            raise ValueError(f"full_weights entries must look like 'unet.<param>' or 'vae.<param>', got {bad}")
        return value

    def lora_config(self, component: str):
        from peft import LoraConfig

        targets = self.unet_target_modules if component == "unet" else self.vae_target_modules
        return LoraConfig(r=self.lora_rank, lora_alpha=self.lora_alpha, init_lora_weights="gaussian",
                          target_modules=targets, lora_dropout=0.0)


class Projector(torch.nn.Module):
    """f: extreme-LQ image -> LQ proxy of the same size. Load with :meth:`from_base` (fresh) or
    :meth:`from_pretrained` (saved); run with :meth:`project` (f alone) or :meth:`restore` (f then g)."""

    def __init__(self, engine: OneStepSD, config: ProjectorConfig, adapter_set: str) -> None:
        super().__init__()
        self.engine = engine
        self.config = config
        self.adapter_set = adapter_set
        self._pipelines: dict[tuple, Any] = {}  # pipelines of restore(), by their components (see pipeline())

    # ---------------------------------------------------------------- creation
    @classmethod
    def from_base(
        cls,
        base_model: WeightsSpec = SD21_BASE,
        *,
        lora_rank: int = 4,
        revision: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        shared: bool = True,
        **config: Any,
    ) -> Projector:
        """A fresh, untrained projector on ``base_model`` (LoRA B = 0: f starts as the base SD one-step
        x0 predictor). Extra keyword arguments set :class:`ProjectorConfig` fields."""
        cfg = ProjectorConfig(base_model=os.fspath(base_model), base_revision=revision, lora_rank=lora_rank, **config)
        engine = OneStepSD.from_pretrained(base_model, revision=revision, device=device, dtype=dtype, shared=shared)
        return cls.from_engine(engine, cfg)

    @classmethod
    def from_engine(cls, engine: OneStepSD, config: ProjectorConfig | None = None) -> Projector:
        """A fresh projector on an already loaded engine (e.g. one built from components)."""
        cfg = config or ProjectorConfig(base_model=engine.base_model, base_revision=engine.revision)
        projector = cls._attach(engine, cfg)
        for name in cfg.full_weights:
            component, param = name.split(".", 1)
            engine.set_override(projector.adapter_set, component, param, engine.base_value(component, param))
        return projector

    @classmethod
    def _attach(cls, engine: OneStepSD, cfg: ProjectorConfig) -> Projector:
        name = f"projector_{next(_instances)}"
        try:
            engine.add_adapter_set(name, unet={"unet": cfg.lora_config("unet")}, vae={"vae": cfg.lora_config("vae")})
        except ValueError as exc:
            raise CheckpointMismatchError(f"The projector's LoRA targets do not fit {engine.base_model}: {exc}") from exc
        return cls(engine, cfg, name)

    @classmethod
    def from_pretrained(
        cls,
        pretrained: WeightsSpec,
        *,
        revision: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        base_model: WeightsSpec | None = None,
        shared: bool = True,
    ) -> Projector:
        """Load a saved projector from a directory or Hub id (``revision`` = its Hub revision).

        ``base_model`` overrides the base recorded in config.json (e.g. a local copy of SD2.1-base).
        """
        local = resolve_dir(pretrained, revision=revision, required=(CONFIG_NAME, WEIGHTS_NAME))
        try:
            cfg = ProjectorConfig.model_validate_json((local / CONFIG_NAME).read_text())
        except ConfigError as exc:  # a saved file, not the caller's arguments: the checkpoint is wrong
            raise CheckpointMismatchError(f"{local / CONFIG_NAME} is not a projector config: {exc}") from exc
        if base_model is not None:
            cfg = cfg.model_copy(update={"base_model": os.fspath(base_model), "base_revision": None})
        # Read (and check) the weights before the base model: a truncated file fails in a second, by name.
        tensors = {k: v for k, v in load_checkpoint(local / WEIGHTS_NAME).items() if isinstance(v, torch.Tensor)}
        engine = OneStepSD.from_pretrained(cfg.base_model, revision=cfg.base_revision, device=device,
                                           dtype=dtype, shared=shared)
        projector = cls._attach(engine, cfg)
        projector._load_weights(tensors)
        return projector

    def _load_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        lora: dict[str, dict[str, torch.Tensor]] = {"unet": {}, "vae": {}}
        full = set(self.config.full_weights)
        for key, value in tensors.items():
            component, rest = key.split(".", 1)
            if component not in lora:
                raise CheckpointMismatchError(f"Unexpected tensor {key!r} in {WEIGHTS_NAME}.")
            if key in full:
                self.engine.set_override(self.adapter_set, component, rest, value)
            else:
                adapter = self.engine.adapter_name(self.adapter_set, component)
                lora[component][rest.replace(".weight", f".{adapter}.weight")] = value
        missing = full - set(tensors)
        if missing:
            raise CheckpointMismatchError(f"{WEIGHTS_NAME} lacks the full weights {sorted(missing)}.")
        for component, state in lora.items():
            self.engine.load_adapter_state(self.adapter_set, component, state)

    # ------------------------------------------------------------------ saving
    def state_for_saving(self) -> dict[str, torch.Tensor]:
        """The tensors of ``projector.safetensors`` (CPU, contiguous; adapter names stripped)."""
        out: dict[str, torch.Tensor] = {}
        for component in ("unet", "vae"):
            adapter = self.engine.adapter_name(self.adapter_set, component)
            for key, value in self.engine.adapter_state(self.adapter_set, component).items():
                out[f"{component}.{key.replace(f'.{adapter}.', '.')}"] = value
        for name in self.config.full_weights:
            out[name] = self.engine.override_value(self.adapter_set, *name.split(".", 1))
        return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write config.json, projector.safetensors and a model card to ``save_directory``."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = self.config.model_copy(update={"elqproj_version": __version__})
        save_file(self.state_for_saving(), str(directory / WEIGHTS_NAME),
                  metadata={"format": "pt", "elqproj_version": __version__})
        (directory / CONFIG_NAME).write_text(json.dumps(cfg.model_dump(mode="json"), indent=2) + "\n")
        (directory / "README.md").write_text(_model_card(cfg))
        return directory

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload elqproj projector",
        revision: str | None = None,
        api: Any = None,
    ) -> Any:
        """Save to a temporary directory and upload it to the Hub repository ``repo_id`` (created if
        needed). ``api`` is a ``huggingface_hub.HfApi`` (default: a new one with ``token``).
        Returns the ``upload_folder`` commit info."""
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message,
                                     revision=revision, repo_type="model")

    # --------------------------------------------------------------- inference
    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def dtype(self) -> torch.dtype:
        return self.engine.dtype

    def encode_prompt(self, prompts: Sequence[str], *, long_prompt: str = "truncate") -> torch.Tensor:
        return self.engine.encode_prompt(prompts, long_prompt=long_prompt)

    def encode_image(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Scaled VAE latent of ``x`` (B,3,H,W) in [-1,1] with f's encoder LoRA (prompt-independent)."""
        with self.engine.using(self.adapter_set):
            return self.engine.encode_image(x, **kwargs)[0]

    def decode_latent(self, x0: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """f's VAE decoder on a scaled latent (B,4,h,w) -> raw image (B,3,8h,8w), roughly [-1,1], unclamped."""
        with self.engine.using(self.adapter_set):
            return self.engine.decode_latent(x0, **kwargs)

    def forward(self, x: torch.Tensor, prompt_embeds: torch.Tensor, **kwargs: Any) -> OneStepOutput:
        """Differentiable f on (B,3,H,W) in [-1,1], H and W multiples of 8 -> :class:`OneStepOutput`
        (``.image`` in [-1,1], same size). Keyword arguments go to :meth:`OneStepSD.forward`."""
        with self.engine.using(self.adapter_set):
            return self.engine(x, prompt_embeds, timestep=self.config.timestep, **kwargs)

    @torch.no_grad()
    def project(
        self,
        image: Any,
        *,
        prompt: str | Sequence[str] | None = None,
        seed: int | None = None,
        encoder_noise: torch.Tensor | None = None,
        sample_posterior: bool = True,
        long_prompt: str = "truncate",
    ) -> Any:
        """f alone: ELQ image -> LQ proxy of the same size, in the input's kind (PIL, numpy, tensor). An image
        below the model's minimum side (64 px for SD2.1) is reflect-padded to it and cropped back.

        ``prompt``: text (one, or one per image; None = empty prompt). For extracted prompts and LFO
        use :meth:`restore` or :class:`~elqproj.pipeline.RestorationPipeline`.
        """
        x, meta = imageio.to_tensor(image)
        padded, pad = imageio.pad_to_multiple(x, 8, min_side=self.engine.min_image_side)  # cropped back below
        prompts = prompts_for_batch(prompt, x.shape[0])
        embeds = self.encode_prompt(prompts, long_prompt=long_prompt)
        out = self(unit_to_signed(padded).to(self.device, self.dtype), embeds, encoder_noise=encoder_noise, seed=seed,
                   sample_posterior=sample_posterior)
        lq = imageio.crop_padding(signed_to_unit(out.image.float()).cpu(), pad)
        return imageio.from_tensor(lq, meta)

    def restore(
        self,
        image: Any,
        *,
        backend: Any = "osediff",
        backend_options: dict[str, Any] | None = None,
        prompt_extractor: Any = None,
        prompt_extractor_options: dict[str, Any] | None = None,
        prompt: str | Sequence[str] | None = None,
        lfo: int | str = 0,
        **kwargs: Any,
    ):
        """f then g in one call: ``proj.restore("photo.jpg", backend="seesr", prompt_extractor="dape", lfo=2)``.

        The components are those of :meth:`pipeline` (loaded once, then cached on this projector);
        ``prompt`` (a fixed text), ``lfo`` and the other keyword arguments go to
        :meth:`RestorationPipeline.__call__ <elqproj.pipeline.RestorationPipeline.__call__>`.

        Returns:
            :class:`~elqproj.pipeline.RestorationResult`.
        """
        pipe = self.pipeline(backend, backend_options=backend_options, prompt_extractor=prompt_extractor,
                             prompt_extractor_options=prompt_extractor_options)
        return pipe(image, prompt=prompt, lfo=lfo, **kwargs)

    def pipeline(
        self,
        backend: Any = "osediff",
        *,
        backend_options: dict[str, Any] | None = None,
        prompt_extractor: Any = None,
        prompt_extractor_options: dict[str, Any] | None = None,
    ):
        """The :class:`~elqproj.pipeline.RestorationPipeline` of this projector with restorer ``backend``
        (a registered name loaded with ``backend_options`` on this projector's device and dtype, or a
        loaded Restorer) and prompt extractor ``prompt_extractor`` (a registered name loaded with
        ``prompt_extractor_options``, a loaded extractor or callable, or ``None``). Built on first use
        and cached: LFO runs the extractor k + 2 times per image, and loading is the slow part."""
        from .pipeline import RestorationPipeline

        key = (_cache_key(backend, backend_options), _cache_key(prompt_extractor, prompt_extractor_options))
        if key not in self._pipelines:
            self._pipelines[key] = RestorationPipeline.from_components(
                projector=self, restorer=backend, restorer_options=backend_options,
                prompt_extractor=prompt_extractor, prompt_extractor_options=prompt_extractor_options,
            )
        return self._pipelines[key]


def _cache_key(component: Any, options: dict[str, Any] | None) -> tuple:
    """A name (case-insensitive) with its options, or a loaded object by identity."""
    if isinstance(component, str):
        return (component.lower(), tuple(sorted((k, repr(v)) for k, v in (options or {}).items())))
    return (id(component), tuple(sorted((k, repr(v)) for k, v in (options or {}).items())))


def _model_card(cfg: ProjectorConfig) -> str:
    return f"""---
library_name: elqproj
base_model: {cfg.base_model}
tags: [image-restoration, super-resolution, stable-diffusion, lora, elqproj]
---
# elqproj projector

A projector f for extreme blind image restoration (IRIB): one-step {cfg.base_model} with rank-{cfg.lora_rank}
LoRA on the UNet and VAE encoder. It maps an extremely degraded image to an ordinary low-quality image that a
frozen restorer (OSEDiff, SeeSR, S3Diff) can handle.

```python
from elqproj import Projector
proj = Projector.from_pretrained("<this repo or folder>", device="cuda")
result = proj.restore("photo.jpg", backend="osediff", prompt_extractor="ram", lfo=2)
result.image.save("restored.png")
```
"""
