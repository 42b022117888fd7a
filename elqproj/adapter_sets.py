"""Named adapter sets on one Stable Diffusion base: several LoRA models share one copy of the base weights.

An **adapter set** is a group of peft LoRA adapters on the UNet and/or the VAE encoder plus optional
*parameter overrides* — base weights a checkpoint replaces outright, such as OSEDiff's fully
fine-tuned UNet ``conv_in``. Switching sets re-points peft's active adapters and swaps the overridden
tensors in place, so the Projector and the OSEDiff backend run on **one** loaded base instead of two.

peft multiplexes LoRA adapters but has no notion of a group of adapters that also replaces base
parameters, of a trainable flag that survives switching, or of merging that must refuse while other
sets share the weights; :class:`AdapterSetMixin` adds exactly that bookkeeping on top of peft and is
mixed into :class:`~elqproj.onestep.OneStepSD`.
"""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .errors import CheckpointMismatchError, ConfigError

__all__ = ["AdapterSet", "AdapterSetMixin", "ADAPTER_COMPONENTS", "official_lora_config"]

#: The engine components that carry adapters (attribute names on the engine).
ADAPTER_COMPONENTS = ("unet", "vae")
_STALE: Any = object()  # an "active set" no name equals: forces activate() to re-apply the state


#: LoRA alpha of the official OSEDiff and S3Diff checkpoints: not stored in them, their loaders rely on
#: peft's default (scaling alpha / rank).
OFFICIAL_LORA_ALPHA = 8


def official_lora_config(rank: int, target_modules: Sequence[str] | str):
    """peft ``LoraConfig`` as the official OSEDiff and S3Diff loaders build it (alpha 8, Gaussian init, no
    dropout); ``target_modules`` is a list of module names (peft matches their suffixes) or one regular
    expression (full match)."""
    from peft import LoraConfig

    targets = target_modules if isinstance(target_modules, str) else sorted(set(target_modules))
    return LoraConfig(r=int(rank), lora_alpha=OFFICIAL_LORA_ALPHA, init_lora_weights="gaussian",
                      target_modules=targets, lora_dropout=0.0)


def _adapter_token(text: str) -> str:
    token = re.sub(r"[^0-9a-zA-Z_]", "_", text)
    return token or "_"


@dataclass
class AdapterSet:
    """A named group of LoRA adapters and parameter overrides, activated together.

    Attributes:
        name: the set's name (unique per engine).
        adapters: component ("unet" / "vae") -> full peft adapter names of this set.
        overrides: (component, parameter name in the *unwrapped* base model, e.g. "conv_in.weight")
            -> tensor that replaces that base parameter while the set is active.
        mergeable: whether :meth:`AdapterSetMixin.merge` may fold the set's LoRA into the base weights.
            False for adapters whose forward is more than ``B(A(x))·scaling`` (e.g. S3Diff's per-sample
            modulation between A and B, which a merged weight cannot represent).
        trainable: whether the set's LoRA and overridden parameters require gradients while it is
            active (see :meth:`AdapterSetMixin.set_trainable`); frozen by default.
    """

    name: str
    adapters: dict[str, list[str]] = field(default_factory=lambda: {c: [] for c in ADAPTER_COMPONENTS})
    overrides: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    mergeable: bool = True
    trainable: bool = False


class AdapterSetMixin:
    """Adapter-set bookkeeping for an ``nn.Module`` with diffusers ``unet`` and ``vae`` attributes.

    The host calls :meth:`_init_adapter_sets` in its ``__init__`` and :meth:`_map_adapter_tensors` from
    its ``_apply`` (so stored overrides follow ``.to(device, dtype)``). Every method holds the engine's
    re-entrant lock: sets can be switched from several threads sharing one engine.
    """

    unet: nn.Module
    vae: nn.Module

    def _init_adapter_sets(self) -> None:
        self._sets: dict[str, AdapterSet] = {}
        self._pristine: dict[tuple[str, str], torch.Tensor] = {}  # base values of overridden parameters
        self._lora_parameters: dict[str, list[nn.Parameter]] = {}  # per set, found once (a scan of every name)
        self._active: str | None = None
        self._merged = False
        self._lock = threading.RLock()

    def _map_adapter_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        for store in [self._pristine] + [s.overrides for s in self._sets.values()]:
            for key, value in store.items():
                store[key] = fn(value)

    def adapter_name(self, set_name: str, suffix: str) -> str:
        """Full peft adapter name for ``suffix`` inside set ``set_name`` (unique per engine)."""
        return f"{_adapter_token(set_name)}__{_adapter_token(suffix)}"

    def has_adapter_set(self, name: str) -> bool:
        return name in self._sets

    def adapter_sets(self) -> list[str]:
        return list(self._sets)

    def _get_set(self, name: str) -> AdapterSet:
        if name not in self._sets:
            raise ConfigError(f"No adapter set {name!r} on this engine (have: {list(self._sets)}).")
        return self._sets[name]

    def add_adapter_set(
        self,
        name: str,
        *,
        unet: Mapping[str, Any] | None = None,
        vae: Mapping[str, Any] | None = None,
        mergeable: bool = True,
    ) -> AdapterSet:
        """Create set ``name`` with peft ``LoraConfig``s per adapter suffix, e.g.
        ``add_adapter_set("osediff", unet={"encoder": cfg_a, "decoder": cfg_b}, vae={"encoder": cfg_c})``.

        New LoRA weights follow the config's init (e.g. B = 0); load trained ones with
        :meth:`load_adapter_state`. ``mergeable=False`` makes :meth:`merge` refuse the set (for
        adapters whose LoRA forward is modified, e.g. by hooks on ``lora_A``).
        """
        with self._lock:
            if name in self._sets:
                raise ConfigError(f"Adapter set {name!r} already exists on this engine.")
            self._unmerge()
            adapter_set = AdapterSet(name, mergeable=mergeable)
            # peft initialises LoRA A randomly: fork the RNG so loading never perturbs the user's seeds.
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                # peft warns whenever a second adapter is added to a model: that is the point here.
                warnings.filterwarnings("ignore", message=".*multiple adapters.*")
                for component, configs in (("unet", unet or {}), ("vae", vae or {})):
                    model = getattr(self, component)
                    for suffix, config in configs.items():
                        full = self.adapter_name(name, suffix)
                        model.add_adapter(config, adapter_name=full)
                        adapter_set.adapters[component].append(full)
            self._sets[name] = adapter_set
            # peft leaves new adapters trainable and active (diffusers' add_adapter calls set_adapter):
            # re-apply the active set's state unconditionally, also when no set is active (then the
            # new adapters must be disabled and frozen; a plain activate(None) would be a no-op here).
            previous, self._active = self._active, _STALE
            self.activate(previous)
            return adapter_set

    def add_random_adapter_set(
        self,
        name: str,
        *,
        unet: Mapping[str, Any] | None = None,
        vae: Mapping[str, Any] | None = None,
        overrides: Sequence[tuple[str, str]] = (),
        seed: int = 0,
        std: float = 0.02,
        mergeable: bool = True,
    ) -> AdapterSet:
        """:meth:`add_adapter_set` with random weights (tiny models for ``elqproj selftest``): every LoRA
        tensor drawn from N(0, ``std``²) and each ``(component, parameter)`` of ``overrides`` set to the
        base value plus N(0, ``std``²) noise, all from one CPU generator seeded with ``seed``."""
        adapter_set = self.add_adapter_set(name, unet=unet, vae=vae, mergeable=mergeable)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in self.adapter_parameters(name):
                param.copy_(torch.randn(param.shape, generator=generator) * std)
        for component, param_name in overrides:
            base = self.base_value(component, param_name).float().cpu()
            self.set_override(name, component, param_name, base + torch.randn(base.shape, generator=generator) * std)
        return adapter_set

    def remove_adapter_set(self, name: str) -> None:
        """Delete set ``name``: its LoRA adapters and overrides (e.g. after a checkpoint failed to load)."""
        with self._lock:
            self._get_set(name)
            if self._active == name:
                self.activate(None)
            self._unmerge()
            removed = self._sets.pop(name)
            self._lora_parameters.pop(name, None)
            with warnings.catch_warnings():  # peft warns that a deleted adapter was active: intended here
                warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
                for component in ADAPTER_COMPONENTS:
                    if removed.adapters[component]:
                        getattr(self, component).delete_adapters(removed.adapters[component])
            previous, self._active = self._active, None
            self.activate(previous)

    # ---------------------------------------------------------------- overrides
    def set_override(self, set_name: str, component: str, param_name: str, value: torch.Tensor) -> None:
        """Replace base parameter ``param_name`` of ``component`` by ``value`` while ``set_name`` is active."""
        with self._lock:
            adapter_set = self._get_set(set_name)
            self._unmerge()
            param = self.base_parameter(component, param_name)
            if value.shape != param.shape:
                raise CheckpointMismatchError(
                    f"Override {component}.{param_name} has shape {tuple(value.shape)}, but the base model's "
                    f"parameter has {tuple(param.shape)}: the checkpoint belongs to another base model."
                )
            key = (component, param_name)
            if key not in self._pristine:  # no set overrides it yet: the live value is the base's own
                self._pristine[key] = param.detach().clone()
            adapter_set.overrides[key] = value.detach().to(param.device, param.dtype).clone()
            if self._active is not None:
                active, self._active = self._active, None
                self.activate(active)

    def base_parameter(self, component: str, name: str) -> nn.Parameter:
        """The live base parameter ``name`` of ``component`` ("unet"/"vae"), named as in the unwrapped model
        (``conv_in.weight`` even where peft moved it to ``conv_in.base_layer.weight``). Its value is the
        active set's override, if any."""
        model = getattr(self, component)
        try:
            return model.get_parameter(name)
        except AttributeError:
            module, _, leaf = name.rpartition(".")
            try:  # peft wraps targeted layers: `conv_in.weight` lives at `conv_in.base_layer.weight`
                return model.get_parameter(f"{module}.base_layer.{leaf}" if module else f"base_layer.{leaf}")
            except AttributeError:
                raise CheckpointMismatchError(f"The base {component} has no parameter {name!r}.") from None

    def base_value(self, component: str, param_name: str) -> torch.Tensor:
        """The base model's own value of a parameter, whatever set is active (a detached copy)."""
        with self._lock:
            key = (component, param_name)
            if key in self._pristine:
                return self._pristine[key].clone()
            self._unmerge()
            return self.base_parameter(component, param_name).detach().clone()

    def override_value(self, set_name: str, component: str, param_name: str) -> torch.Tensor:
        """The value set ``set_name`` gives a base parameter it overrides (a detached tensor): the live
        parameter while the set is active (training updates it in place), else the stored override."""
        with self._lock:
            key = (component, param_name)
            adapter_set = self._get_set(set_name)
            if key not in adapter_set.overrides:
                raise ConfigError(f"Adapter set {set_name!r} does not override {component}.{param_name}.")
            if self._active == set_name:
                return self.base_parameter(component, param_name).detach()
            return adapter_set.overrides[key]

    def override_parameter_names(self, set_name: str) -> list[tuple[str, str]]:
        return list(self._get_set(set_name).overrides)

    # ----------------------------------------------------------------- training
    def set_trainable(self, name: str, trainable: bool = True) -> None:
        """Let set ``name``'s LoRA and overridden base parameters require gradients while it is active.

        The flag is kept per set and re-applied at every activation (peft's ``set_adapter`` would
        otherwise mark whatever it activates trainable); every other parameter stays frozen. Training
        needs a private engine (``shared=False``): overridden parameters are trained in place.
        """
        with self._lock:
            self._get_set(name).trainable = trainable
            if self._active == name:
                self._apply_trainable(self._sets[name])

    def trainable_parameters(self, name: str) -> list[nn.Parameter]:
        """The tensors training set ``name`` updates: its LoRA parameters, then the live base parameters
        it overrides (sorted by name: optimiser state is matched to parameters by position on resume).
        The overridden ones hold the set's values only while it is active."""
        return self.adapter_parameters(name) + [
            self.base_parameter(component, param_name)
            for component, param_name in sorted(self.override_parameter_names(name))]

    def _apply_trainable(self, chosen: AdapterSet | None) -> None:
        # peft's set_adapter marks the LoRA it activates trainable and every other LoRA frozen, and
        # disable_adapters freezes them all: only the chosen set's LoRA and the overridable base
        # parameters (shared by the sets that override them) need setting here.
        trainable = chosen is not None and chosen.trainable
        if chosen is not None:
            for param in self.adapter_parameters(chosen.name):
                param.requires_grad_(trainable)
        for key in self._pristine:
            self.base_parameter(*key).requires_grad_(trainable and key in chosen.overrides)

    # --------------------------------------------------------------- switching
    def activate(self, name: str | None) -> None:
        """Make set ``name`` (or no set, ``None``) the one the next forward passes use."""
        with self._lock:
            chosen = self._get_set(name) if name is not None else None
            if name == self._active:
                return
            self._unmerge()
            with torch.no_grad():  # a no_grad copy bumps the version counter: a stale autograd graph errors loudly
                for key, pristine in self._pristine.items():
                    value = chosen.overrides.get(key, pristine) if chosen else pristine
                    self.base_parameter(*key).copy_(value)
            for component in ADAPTER_COMPONENTS:
                model = getattr(self, component)
                if not getattr(model, "_hf_peft_config_loaded", False):
                    continue
                names = chosen.adapters[component] if chosen else []
                if names:
                    model.enable_adapters()
                    model.set_adapter(names)
                else:
                    model.disable_adapters()
            self._apply_trainable(chosen)
            self._active = name

    @property
    def active_set(self) -> str | None:
        return self._active

    @contextmanager
    def using(self, name: str | None) -> Iterator[Any]:
        """Run the block with set ``name`` active, holding the engine's lock (thread-safe sharing)."""
        with self._lock:
            self.activate(name)
            yield self

    def merge(self) -> None:
        """Merge the active set's LoRA into the base weights (faster inference, same result).

        Only allowed while the engine holds a single adapter set: un-merging in reduced precision
        does not restore the base weights bit-exactly, so repeated set switches would drift.
        """
        with self._lock:
            if len(self._sets) != 1:
                raise ConfigError(
                    f"merge() needs an engine with exactly one adapter set (this one has {list(self._sets)}); "
                    "load the restorer on its own engine (shared=False) to merge its LoRA."
                )
            only = next(iter(self._sets))
            if not self._sets[only].mergeable:
                raise ConfigError(
                    f"Adapter set {only!r} cannot be merged: its LoRA forward is not a plain B(A(x)) "
                    "(e.g. S3Diff modulates every LoRA layer per sample)."
                )
            self.activate(only)
            if self._merged:
                return
            from peft.tuners.tuners_utils import BaseTunerLayer

            for component in ADAPTER_COMPONENTS:
                names = self._sets[only].adapters[component]
                for module in getattr(self, component).modules():
                    if isinstance(module, BaseTunerLayer) and any(n in module.lora_A for n in names):
                        module.merge(adapter_names=[n for n in names if n in module.lora_A])
            self._merged = True

    def _unmerge(self) -> None:
        if not self._merged:
            return
        from peft.tuners.tuners_utils import BaseTunerLayer

        for component in ADAPTER_COMPONENTS:
            for module in getattr(self, component).modules():
                if isinstance(module, BaseTunerLayer) and module.merged:
                    module.unmerge()
        self._merged = False

    # ------------------------------------------------------------- LoRA tensors
    def load_adapter_state(self, set_name: str, component: str, state: Mapping[str, torch.Tensor]) -> None:
        """Copy LoRA tensors (keys ``<module>.lora_A.<full adapter name>.weight`` …) into ``component``.

        Every LoRA tensor of the set's adapters on that component must be provided and every key must
        exist with the right shape; otherwise :class:`CheckpointMismatchError` names the offenders.
        """
        model = getattr(self, component)
        own = model.state_dict()
        names = self._get_set(set_name).adapters[component]
        unexpected = [k for k in state if k not in own]
        wrong_shape = [k for k in state if k in own and own[k].shape != state[k].shape]
        missing = [k for k in own if any(f".{n}." in k for n in names) and k not in state]
        if unexpected or wrong_shape or missing:
            parts = []
            for label, keys in (("unexpected", unexpected), ("wrong shape", wrong_shape), ("missing", missing)):
                if keys:
                    parts.append(f"{len(keys)} {label} (e.g. {', '.join(sorted(keys)[:3])})")
            raise CheckpointMismatchError(
                f"LoRA weights for {component} of adapter set {set_name!r} do not fit the base model: "
                + "; ".join(parts) + ". Is the checkpoint for this base model and LoRA rank?"
            )
        with self._lock, torch.no_grad():
            self._unmerge()
            params = dict(model.named_parameters())
            for key, value in state.items():
                params[key].copy_(value.to(params[key].dtype))

    def adapter_state(self, set_name: str, component: str) -> dict[str, torch.Tensor]:
        """The LoRA tensors of ``set_name`` on ``component`` (keys with full adapter names)."""
        names = self._get_set(set_name).adapters[component]
        return {k: v for k, v in getattr(self, component).state_dict().items()
                if any(f".{n}." in k for n in names)}

    def adapter_parameters(self, set_name: str) -> list[nn.Parameter]:
        """The LoRA parameters of a set (:meth:`trainable_parameters` adds its overridden base parameters)."""
        if set_name not in self._lora_parameters:
            found = []
            for component in ADAPTER_COMPONENTS:
                names = self._get_set(set_name).adapters[component]
                found += [p for k, p in getattr(self, component).named_parameters()
                          if any(f".{n}." in k for n in names)]
            self._lora_parameters[set_name] = found
        return list(self._lora_parameters[set_name])
