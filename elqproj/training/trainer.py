"""IRIB training on accelerate: a projector f in front of a frozen one-step restorer g.

One optimiser step (IRIB paper, eq. 14-19; OSEDiff's VSD recipe)::

    prompts  c = dropout(Y(image), p)                          Y: the tagger, p = 0.3
    x̂ = f(x_ELQ; c)             (trainable: f's LoRA on UNet + VAE encoder, and f's UNet conv_in)
    ẑ = g(x̂; c)                 (frozen; gradients flow through it into f)
    L_f = λ_LQ·‖G_τ*D(ẑ) − G_τ*x‖² + λ_VSD·VSD(ẑ) + λ_l2‖ẑ−z‖² + λ_LPIPS·LPIPS(ẑ,z) + λ_blur‖G_k*ẑ − G_k*z‖²
    step f;  then  L_reg = λ_VSD-LoRA·‖ε_reg(z_t, t, c) − ε‖² on sg(ẑ)'s latent;  step the regulariser

The baseline (``mode: finetune_restorer``) trains g itself on ELQ → HQ with the same terms (no f).

Networks live on separate private engines (f, g) and a separate regulariser UNet: an engine swaps
parameter overrides in place when adapter sets switch, which a pending backward would not survive.
Frozen weights are held in the mixed-precision dtype, trained ones in float32. DDP (or DeepSpeed /
FSDP through ``accelerate config``) wraps the two trained modules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import losses
from ..hub import load_checkpoint
from ..degradations import DegradationParams, DegradationPipeline
from ..seeding import derive_seed
from ..errors import ConfigError, NumericalError
from ..onestep import OneStepOutput, OneStepSD
from ..projector import Projector
from ..tiling import TilingConfig
from ..value_range import signed_to_unit, unit_to_signed
from . import checkpoints
from .config import TrainingConfig
from .data import build_train_dataset, build_validation_batch, degradation_config
from .perceptual import load_lpips
from .prompting import build_prompt_extractor, drop_prompts
from .regularizer import VSDRegularizer

__all__ = ["IRIBTrainer", "train"]

logger = logging.getLogger(__name__)

_WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: tracker -> the packages that provide it (accelerate only warns, then logs nothing, when none is installed)
_TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}
_WHOLE = TilingConfig(mode="never")  # training crops are processed whole: tiling would only change the numbers


@dataclass
class _Forward:
    """One forward pass: the weighted total, its unweighted terms, g's output (its latent feeds the
    regulariser), the prompt embeddings, and f's output x̂ (IRIB mode) for inspection."""

    terms: dict[str, torch.Tensor]
    total: torch.Tensor
    restored: OneStepOutput
    prompt_embeds: torch.Tensor
    projected: OneStepOutput | None


def _check_trackers(trackers: list[str]) -> None:
    import importlib.util

    for tracker in trackers:
        packages = _TRACKER_PACKAGES[tracker]
        if not any(importlib.util.find_spec(package) for package in packages):
            raise ConfigError(
                f"training.log_with asks for {tracker!r}, but {' or '.join(packages)} is not installed: "
                f"pip install {packages[0]} (or remove {tracker!r} from training.log_with)."
            )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Config -> flat {dotted key: scalar or str} (what tensorboard's hparams accept)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


class IRIBTrainer:
    """Builds every network, optimiser and data loader of a run from a :class:`TrainingConfig`.

    Args:
        config: the run's configuration.
        resume: ``None``, ``"latest"`` (newest complete checkpoint of ``output_dir``, if any) or a
            checkpoint directory: weights, optimiser/scheduler/RNG states and the step count continue.

    ``train()`` runs to ``training.max_steps``; :meth:`training_step` is one optimiser step on a batch
    (benchmarks and tests drive it directly).
    """

    def __init__(self, config: TrainingConfig, *, resume: str | None = None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import (
            DataLoaderConfiguration,
            DistributedDataParallelKwargs,
            ProjectConfiguration,
            set_seed,
        )

        self.config = config
        run = config.training
        _check_trackers(run.log_with)
        self.output_dir = Path(config.output_dir)
        try:
            self.accelerator = Accelerator(
                gradient_accumulation_steps=run.gradient_accumulation_steps,
                mixed_precision=run.mixed_precision,
                log_with=list(run.log_with) or None,
                project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                    logging_dir=str(self.output_dir / "logs")),
                dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
                kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
            )
        except ValueError as exc:
            if "already been initialized" not in str(exc):
                raise
            raise ConfigError(
                f"training.mixed_precision {run.mixed_precision!r} differs from the precision accelerate was "
                "set up with earlier in this process (accelerate fixes it once per process); start a new "
                "Python process for this run."
            ) from exc
        set_seed(config.seed)
        if run.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.device = self.accelerator.device
        if run.mixed_precision == "fp16" and self.device.type == "cpu":
            raise ConfigError("training.mixed_precision 'fp16' needs a CUDA GPU; use 'bf16' or 'no' on the CPU.")
        self.weight_dtype = _WEIGHT_DTYPES[run.mixed_precision]
        self.resume_dir = checkpoints.resolve_resume(self.output_dir, resume)
        self.global_step = 0
        self.restorer_class = self._restorer_class()
        self.dataset = build_train_dataset(config)
        per_step = config.data.batch_size * self.accelerator.num_processes
        if len(self.dataset) < per_step:
            raise ConfigError(
                f"{len(self.dataset)} training images give no full batch of {config.data.batch_size} per process "
                f"on {self.accelerator.num_processes} process(es); add images or lower data.batch_size."
            )

        self.student, self.restorer = self._build_networks()
        self.student_parameters = self._trainable_parameters(self.student)
        self.regularizer = self._build_regularizer()
        if self.weight_dtype != torch.float32:
            from diffusers.training_utils import cast_training_params

            cast_training_params([self.student, self.regularizer], dtype=torch.float32)
        self.set_gradient_checkpointing(run.gradient_checkpointing)
        loss = config.loss
        self.lpips = None
        if loss.lambda_lpips:
            self.lpips = load_lpips(loss.lpips_net, backbone=loss.lpips_backbone, device=self.device)
        self.prompt_extractor = build_prompt_extractor(config.prompts, device=self.device, dtype=self.weight_dtype)
        self.lq_pipeline = DegradationPipeline(degradation_config(config.data.lq_degradation))
        self.negative_embeds = self.student.encode_prompt([config.prompts.negative_prompt])

        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=config.data.batch_size, shuffle=True, drop_last=True,
            num_workers=config.data.num_workers, pin_memory=self.device.type == "cuda",
        )
        optimizer, regularizer_optimizer = self._optimizers()
        scheduler, regularizer_scheduler = (self._scheduler(optimizer), self._scheduler(regularizer_optimizer))
        (self.student_model, self.regularizer_model, self.optimizer, self.regularizer_optimizer, self.train_loader,
         self.lr_scheduler, self.regularizer_lr_scheduler) = self.accelerator.prepare(
            self.student, self.regularizer, optimizer, regularizer_optimizer, loader, scheduler, regularizer_scheduler)
        self.accelerator.register_save_state_pre_hook(self._save_weights_hook)
        self.accelerator.register_load_state_pre_hook(self._load_weights_hook)
        self.validation_batch = None
        if self.accelerator.is_main_process:  # a loaded Hugging Face dataset is reused, not loaded again
            self.validation_batch = build_validation_batch(config, rows=getattr(self.dataset, "rows", None))
        self.validation_metrics = None
        if self.validation_batch is not None:
            from ..evaluation.metrics import MetricSuite

            # The metrics of `elqproj evaluate`, on the CPU: a few images, and no GPU memory taken from training.
            self.validation_metrics = MetricSuite(config.training.validation_metrics, device="cpu")

        if self.resume_dir is not None:
            self.accelerator.load_state(str(self.resume_dir))
            self.global_step = int(checkpoints.read_trainer_state(self.resume_dir)["global_step"])
            logger.info("resumed from %s at step %d", self.resume_dir, self.global_step)
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "training_config.yaml").write_text(config.to_yaml())
        self.accelerator.init_trackers(run.tracker_project, config=_flatten(config.model_dump(mode="json")))
        if self.accelerator.is_main_process:
            logger.info("training %s on %d process(es) (%s, %s), %d images, from step %d", config.mode,
                        self.accelerator.num_processes, self.accelerator.distributed_type.value, self.device,
                        len(self.dataset), self.global_step)

    # ------------------------------------------------------------------ building
    def _private_engine(self, base_model: str, revision: str | None) -> OneStepSD:
        return OneStepSD.from_pretrained(base_model, revision=revision, device=self.device, dtype=self.weight_dtype,
                                         shared=False, tiling=_WHOLE)

    def _restorer_class(self) -> type:
        from ..adapters.base import Restorer, get_restorer_class

        name = self.config.restorer.name
        cls = get_restorer_class(name)
        if not cls.capabilities.differentiable or cls.training_forward is Restorer.training_forward:
            raise ConfigError(
                f"Restorer {name!r} has no differentiable one-step forward (Restorer.training_forward); IRIB "
                "trains through a one-step restorer such as 'osediff' or 's3diff'. Use it with a trained "
                "projector at inference instead."
            )
        return cls

    def _load_restorer(self, weights: str | None) -> nn.Module:
        section, cls = self.config.restorer, self.restorer_class
        if section.base_model is not None:
            base, revision = section.base_model, section.revision
        elif cls.capabilities.shares_projector_base:  # g runs on f's base (a local copy of it, say)
            base, revision = self.config.base_model, self.config.base_revision
        else:
            base, revision = cls.capabilities.base_model, section.revision
        engine = self._private_engine(base, revision)
        return cls.from_pretrained(weights, engine=engine, device=self.device, dtype=self.weight_dtype,
                                   **section.options)

    def _build_networks(self) -> tuple[nn.Module, nn.Module | None]:
        """(student, frozen restorer): (f, g) for IRIB, (g, None) for the baseline."""
        cfg = self.config
        if cfg.mode == "finetune_restorer":
            weights = str(self.resume_dir / checkpoints.RESTORER_WEIGHTS) if self.resume_dir else cfg.restorer.weights
            return self._load_restorer(weights), None
        source = self.resume_dir or cfg.projector.init_from
        if source is not None:
            projector = Projector.from_pretrained(source, base_model=cfg.base_model, device=self.device,
                                                  dtype=self.weight_dtype, shared=False)
        else:
            projector = Projector.from_base(cfg.base_model, revision=cfg.base_revision, lora_rank=cfg.projector.lora_rank,
                                            lora_alpha=cfg.projector.lora_alpha, device=self.device,
                                            dtype=self.weight_dtype, shared=False)
        projector.engine.tiling = _WHOLE
        restorer = self._load_restorer(cfg.restorer.weights)
        restorer.requires_grad_(False)  # g's own modules (e.g. S3Diff's degradation estimator); its engine's sets are frozen
        return projector, restorer

    @staticmethod
    def _trainable_parameters(student: nn.Module) -> list[nn.Parameter]:
        """The student's LoRA and its fully trained base parameters (trained in place: the student owns
        its engine and its adapter set stays active)."""
        engine: OneStepSD = student.engine
        engine.set_trainable(student.adapter_set)
        engine.activate(student.adapter_set)
        return engine.trainable_parameters(student.adapter_set)

    def _build_regularizer(self) -> VSDRegularizer:
        cfg = self.config
        regularizer = VSDRegularizer.from_pretrained(
            cfg.base_model, revision=cfg.base_revision, lora_rank=cfg.projector.lora_rank,
            lora_alpha=cfg.projector.lora_alpha, device=self.device, dtype=self.weight_dtype)
        if self.resume_dir is not None:
            state = load_checkpoint(self.resume_dir / checkpoints.REGULARIZER_WEIGHTS)
            regularizer.load_lora_state_dict({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
        return regularizer

    def _optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        opt = self.config.optimizer
        kwargs = dict(betas=(opt.adam_beta1, opt.adam_beta2), weight_decay=opt.weight_decay, eps=opt.adam_epsilon)
        return (torch.optim.AdamW(self.student_parameters, lr=opt.learning_rate, **kwargs),
                torch.optim.AdamW(self.regularizer.lora_parameters(),
                                  lr=opt.regularizer_learning_rate or opt.learning_rate, **kwargs))

    def _scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        from diffusers.optimization import get_scheduler

        opt, processes = self.config.optimizer, self.accelerator.num_processes
        try:  # accelerate steps a prepared scheduler once per process per optimiser step
            return get_scheduler(opt.lr_scheduler, optimizer, num_warmup_steps=opt.lr_warmup_steps * processes,
                                 num_training_steps=self.config.training.max_steps * processes)
        except ValueError as exc:
            raise ConfigError(f"optimizer.lr_scheduler {opt.lr_scheduler!r}: {exc}") from exc

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute activations in the backward pass (f, g and the regulariser UNet, and f/g's VAEs)."""
        modules = [self.regularizer.unet]
        for network in (self.student, self.restorer):
            if network is not None:
                modules += [network.engine.unet, network.engine.vae]
        for module in modules:
            if enabled:
                module.enable_gradient_checkpointing()
            else:
                module.disable_gradient_checkpointing()

    # ---------------------------------------------------------------- one step
    def _prompts(self, batch: dict[str, Any], generator: torch.Generator | None) -> list[str]:
        with torch.no_grad():
            texts = self.prompt_extractor(batch[self.config.prompts.image].to(self.device))
        if generator is None:
            return texts
        return drop_prompts(texts, self.config.prompts.dropout, generator)

    def _degrade_back(self, batch: dict[str, Any], generator: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
        count = batch["hq"].shape[0]
        if self.config.loss.degrade_back == "same":
            params = [DegradationParams.model_validate_json(text) for text in batch["lq_params"]]
        else:
            params = [self.lq_pipeline.sample(1, generator) for _ in range(count)]

        def degrade(images: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.lq_pipeline.apply(images[i:i + 1], params[i], differentiable=True)
                              for i in range(count)])

        return degrade

    def _vsd(self, latents: torch.Tensor, prompt_embeds: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        low, high = self.config.loss.vsd_timesteps
        count = latents.shape[0]
        timesteps = torch.randint(low, high, (count,), generator=generator).to(self.device)
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        noisy = self.regularizer.add_noise(latents.detach(), noise, timesteps)
        x0_regularizer = self.regularizer.regularizer_x0(noisy, timesteps, prompt_embeds)
        x0_pretrained = self.regularizer.pretrained_x0(
            noisy, timesteps, prompt_embeds, self.negative_embeds.expand(count, -1, -1), self.config.loss.cfg_vsd)
        return losses.vsd_loss(latents, x0_regularizer, x0_pretrained)

    def compute_losses(self, batch: dict[str, Any], generator: torch.Generator) -> _Forward:
        """The student's loss on a batch (with gradients), its terms, and what the regulariser needs.

        ``batch``: "elq", "lq", "hq" (B, 3, S, S) in [0, 1] and "lq_params" (JSON, one per image).
        ``generator`` (CPU) draws every random number of the step: prompt dropout, VAE posterior
        samples, VSD timesteps and noise, resampled degrade-backs.
        """
        cfg = self.config.loss
        elq, lq, hq = (unit_to_signed(batch[key].to(self.device)) for key in ("elq", "lq", "hq"))
        prompts = self._prompts(batch, generator)
        terms: dict[str, torch.Tensor] = {}
        with self.accelerator.autocast():
            embeds = self.student.encode_prompt(prompts)
            projected = None
            if self.restorer is None:
                restored = self.student_model(elq, embeds, generator=generator)
            else:
                projected = self.student_model(elq, embeds, generator=generator)
                restored = self.restorer.training_forward(projected.image, self.restorer.encode_prompt(prompts),
                                                          generator=generator)
            total = restored.image.new_zeros((), dtype=torch.float32)
            if cfg.lambda_lq:
                terms["lq_recon"] = losses.lq_reconstruction_loss(
                    restored.image, lq, self._degrade_back(batch, generator),
                    sigma=cfg.lq_blur_sigma, kernel_size=cfg.lq_blur_kernel_size)
                total = total + cfg.lambda_lq * terms["lq_recon"]
            if cfg.lambda_vsd:
                terms["vsd"] = self._vsd(restored.x0, embeds, generator)
                total = total + cfg.lambda_vsd * terms["vsd"]
            fidelity = losses.hq_fidelity_loss(
                restored.image, hq, perceptual=self.lpips, lambda_l2=cfg.lambda_l2, lambda_lpips=cfg.lambda_lpips,
                lambda_blur=cfg.lambda_blur, sigma=cfg.hq_blur_sigma, kernel_size=cfg.hq_blur_kernel_size)
        terms.update(l2=fidelity.l2, lpips=fidelity.lpips, hq_blur=fidelity.blur, hq_fidelity=fidelity.total)
        total = total + fidelity.total
        return _Forward(terms, total, restored, embeds, projected)

    def _regularizer_loss(self, latents: torch.Tensor, prompt_embeds: torch.Tensor,
                          generator: torch.Generator) -> torch.Tensor:
        count = latents.shape[0]
        timesteps = torch.randint(0, len(self.regularizer.alphas_cumprod), (count,), generator=generator).to(self.device)
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        noisy = self.regularizer.add_noise(latents.detach(), noise, timesteps)
        with self.accelerator.autocast():
            prediction = self.regularizer_model(noisy, timesteps, prompt_embeds.detach())
        return losses.diffusion_loss(prediction, noise)

    def step_generator(self, micro_step: int) -> torch.Generator:
        """The CPU generator of one micro-batch: a function of (seed, micro-step, process), so a resumed
        run draws what the uninterrupted run would have drawn."""
        seed = derive_seed(self.config.seed, micro_step, self.accelerator.process_index)
        return torch.Generator().manual_seed(seed)

    def training_step(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Forward, backward and (when gradients are synchronised) an update of f, then of the regulariser.

        Returns the detached loss terms ("total", "lq_recon", "vsd", "l2", "lpips", "hq_blur",
        "hq_fidelity", "regularizer"), before accumulation scaling.
        """
        accelerator, cfg = self.accelerator, self.config
        generator = generator or self.step_generator(self.global_step * cfg.training.gradient_accumulation_steps)
        out = self.compute_losses(batch, generator)
        self._check_finite_loss(out)
        accelerator.backward(out.total)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(self.student_parameters, cfg.optimizer.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

        regularizer_loss = self._regularizer_loss(out.restored.x0, out.prompt_embeds, generator)
        accelerator.backward(cfg.loss.lambda_vsd_lora * regularizer_loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(self.regularizer.lora_parameters(), cfg.optimizer.max_grad_norm)
        self.regularizer_optimizer.step()
        self.regularizer_lr_scheduler.step()
        self.regularizer_optimizer.zero_grad(set_to_none=True)
        return {"total": out.total.detach(), **{k: v.detach() for k, v in out.terms.items()},
                "regularizer": regularizer_loss.detach()}

    def _check_finite_loss(self, out: _Forward) -> None:
        """Stop before a NaN/inf loss reaches the weights (they would all turn NaN, and every later
        checkpoint with them)."""
        if bool(torch.isfinite(out.total.detach())):
            return
        bad = sorted(name for name, value in out.terms.items() if not bool(torch.isfinite(value.detach())))
        precision = self.config.training.mixed_precision
        hint = "use training.mixed_precision: bf16 (fp16 overflows more easily)" if precision == "fp16" else \
            "lower optimizer.learning_rate or raise optimizer.lr_warmup_steps"
        raise NumericalError(
            f"The training loss is NaN or infinite at step {self.global_step + 1} (non-finite terms: "
            f"{', '.join(bad) or 'none; their weighted sum overflowed'}); no update was made. "
            f"Resume from the last checkpoint ({hint})."
        )

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, float]:
        """The loss terms of the current student on ``batch`` without any update (same draws for the
        same ``generator`` seed, so two calls compare the networks, not the noise)."""
        out = self.compute_losses(batch, generator)
        return {"total": float(out.total), **{k: float(v) for k, v in out.terms.items()}}

    # -------------------------------------------------------------------- loop
    def train(self) -> Path:
        """Run to ``training.max_steps``; returns the final checkpoint directory."""
        from tqdm.auto import tqdm

        run, accelerator = self.config.training, self.accelerator
        accumulation = run.gradient_accumulation_steps
        per_epoch = len(self.train_loader)
        epoch, skip = divmod(self.global_step * accumulation, per_epoch)
        micro_step = self.global_step * accumulation
        progress = tqdm(total=run.max_steps, initial=self.global_step, desc="train", unit="step",
                        disable=not accelerator.is_local_main_process)
        last_saved = self.resume_dir if self.resume_dir is not None and self.global_step >= run.max_steps else None
        while self.global_step < run.max_steps:
            self.dataset.set_epoch(epoch)
            self.train_loader.set_epoch(epoch)
            loader = accelerator.skip_first_batches(self.train_loader, skip) if skip else self.train_loader
            skip = 0
            for batch in loader:
                with accelerator.accumulate(self.student_model, self.regularizer_model):
                    logs = self.training_step(batch, self.step_generator(micro_step))
                micro_step += 1
                if not accelerator.sync_gradients:
                    continue
                self.global_step += 1
                progress.update(1)
                step = self.global_step
                if step % run.log_every == 0 or step == 1:
                    values = {f"train/{k}": float(v) for k, v in logs.items()}
                    values["train/lr"] = self.lr_scheduler.get_last_lr()[0]
                    progress.set_postfix(loss=f"{values['train/total']:.4f}")
                    accelerator.log(values, step=step)
                if step % run.checkpoint_every == 0 or step == run.max_steps:
                    last_saved = self.save_checkpoint()
                if step % run.validate_every == 0 or step == run.max_steps:
                    self.validate()
                if step >= run.max_steps:
                    break
            epoch += 1
        progress.close()
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return last_saved

    # ------------------------------------------------------------- checkpoints
    def _save_weights_hook(self, models: list[nn.Module], weights: list[Any], output_dir: str) -> None:
        weights.clear()  # the networks are saved below, without their frozen base weights
        if not self.accelerator.is_main_process:
            return
        directory = Path(output_dir)
        if self.restorer is None:
            self.student.save_weights(directory / checkpoints.RESTORER_WEIGHTS)
        else:
            self.student.save_pretrained(directory)
        from safetensors.torch import save_file

        save_file(self.regularizer.lora_state_dict(), str(directory / checkpoints.REGULARIZER_WEIGHTS))

    @staticmethod
    def _load_weights_hook(models: list[nn.Module], input_dir: str) -> None:
        models.clear()  # the networks were built from the checkpoint's weights already

    def save_checkpoint(self) -> Path:
        """Write ``checkpoint-<step>`` (weights, optimiser/scheduler/RNG states, config, step count)."""
        directory = self.output_dir / f"{checkpoints.CHECKPOINT_PREFIX}{self.global_step}"
        self.accelerator.save_state(str(directory))
        if self.accelerator.is_main_process:
            (directory / "training_config.yaml").write_text(self.config.to_yaml())
            checkpoints.write_trainer_state(directory, {"global_step": self.global_step, "mode": self.config.mode})
            for removed in checkpoints.prune_checkpoints(self.output_dir, self.config.training.checkpoints_total_limit):
                logger.info("removed old checkpoint %s", removed)
        self.accelerator.wait_for_everyone()
        return directory

    # -------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> Path | None:
        """Main process: run the fixed validation batch, save a grid PNG (rows: ELQ | f(ELQ) | g(f(ELQ)) |
        LQ target | HQ; the baseline omits f and LQ), log it and the mean of each of
        ``training.validation_metrics`` on g's 8-bit output (``validation/<metric>``, as ``elqproj evaluate``
        computes them) to the trackers."""
        if self.validation_batch is None:
            self.accelerator.wait_for_everyone()
            return None
        from torchvision.transforms.v2.functional import to_pil_image
        from torchvision.utils import make_grid

        from ..imageio import save_image

        batch = self.validation_batch
        rows, scores = [], []
        for index in range(batch["hq"].shape[0]):
            item = {key: value[index:index + 1] for key, value in batch.items()}
            generator = torch.Generator().manual_seed(self.config.seed)
            prompts = self._prompts(item, None)
            elq = unit_to_signed(item["elq"].to(self.device))
            with self.accelerator.autocast():
                first = self.student(elq, self.student.encode_prompt(prompts), generator=generator).image
                if self.restorer is None:
                    restored, middle = first, []
                else:
                    restored = self.restorer.training_forward(first, self.restorer.encode_prompt(prompts),
                                                              generator=generator).image
                    middle = [first]
            restored01 = (signed_to_unit(restored.float().cpu()).clamp(0, 1) * 255).round() / 255  # what the PNG holds
            scores.append(self.validation_metrics.score(restored01, item["hq"]))
            shown = [item["elq"]] + [signed_to_unit(m.float().cpu()).clamp(0, 1) for m in middle] + [restored01]
            if self.restorer is not None:
                shown.append(item["lq"])
            rows.append(torch.cat(shown + [item["hq"]]))
        columns = rows[0].shape[0]
        grid = make_grid(torch.cat(rows), nrow=columns, padding=2)
        path = self.output_dir / "validation" / f"step-{self.global_step:07d}.png"
        save_image(to_pil_image(grid), path)
        values = {f"validation/{name}": sum(score[name] for score in scores) / len(scores) for name in scores[0]}
        self.accelerator.log(values, step=self.global_step)
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({"validation": grid[None].numpy()}, step=self.global_step, dataformats="NCHW")
            elif tracker.name == "wandb":
                tracker.log_images({"validation": [to_pil_image(grid)]}, step=self.global_step)
        self.accelerator.wait_for_everyone()
        return path


def train(config: TrainingConfig, *, resume: str | None = None) -> Path:
    """Train as ``config`` says (resuming from ``resume``: None, "latest" or a checkpoint directory);
    returns the final checkpoint directory (a Projector directory in IRIB mode)."""
    return IRIBTrainer(config, resume=resume).train()
