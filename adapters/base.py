"""The restorer protocol (g) and the registry that finds restorers by name.

A restorer maps an ordinary-LQ image to an HQ image. Each architecture lives in one module of
``elqproj.adapters`` and is listed once among the built-ins of :data:`RESTORERS` (spandrel's shape:
adding a restorer = one module + one registry line). Third-party packages add restorers through the
entry-point group ``elqproj.restorers``::

    [project.entry-points."elqproj.restorers"]
    myrestorer = "my_package.restorer:MyRestorer"

where ``MyRestorer`` subclasses :class:`Restorer`. See docs/adding-a-restorer.md.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from elqproj.errors import ConfigError
from elqproj.registry import Registry, RegistryEntry

__all__ = [
    "RestorerCapabilities",
    "Restorer",
    "register_restorer",
    "load_restorer",
    "list_restorers",
    "get_restorer_class",
    "RESTORERS",
    "ENTRY_POINT_GROUP",
]

ENTRY_POINT_GROUP = "elqproj.restorers"


@dataclass(frozen=True)
class RestorerCapabilities:
    """What a restorer can do, shown by ``elqproj info`` and used by the pipeline.

    Attributes:
        scale: default output/input size ratio (OSEDiff and S3Diff default to 4).
        steps: network evaluations per image at default settings (1 for one-step models).
        supports_fp16 / supports_bf16: the model runs correctly in that dtype on CUDA.
        needs_prompt: conditioned on text; without a prompt it uses the empty string.
        uses_image_features: consumes a prompt extractor's image features (SeeSR's RAM embedding).
        differentiable: a one-step, differentiable forward usable as the frozen g in IRIB training.
        code_licence / weights_licence: licences of the official code and of the weights it loads.
        base_model: Hub id of the default base diffusion model.
        default_weights: where the default restorer weights come from (Hub id / file / URL).
        paper: citation or arXiv id.
        shares_projector_base: runs on the projector's SD2.1-base (OSEDiff): in a pipeline with a
            projector it is loaded on the projector's base model, so one copy of the weights serves f and g.
        supports_tiling: takes a :class:`~elqproj.tiling.TilingConfig` (:meth:`Restorer.configure_tiling`).
    """

    scale: int
    steps: int
    supports_fp16: bool
    supports_bf16: bool
    needs_prompt: bool
    uses_image_features: bool
    differentiable: bool
    code_licence: str
    weights_licence: str
    base_model: str
    default_weights: str | None
    paper: str
    shares_projector_base: bool = False
    supports_tiling: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Restorer(torch.nn.Module, abc.ABC):
    """A frozen restorer g: LQ image -> HQ image.

    Subclasses implement :meth:`from_pretrained` and :meth:`restore`; :attr:`name` and
    :attr:`capabilities` are class attributes. ``restore`` accepts what :func:`elqproj.imageio.to_tensor`
    accepts (PIL, numpy, torch ``(B,3,H,W)`` float in [0,1], paths, lists) and returns the input's kind.
    """

    name: ClassVar[str]
    capabilities: ClassVar[RestorerCapabilities]
    #: ``(name, options)`` it was loaded with by :func:`load_restorer` (device and dtype left out), so a
    #: pipeline can record how to load it again; ``None`` for a restorer built otherwise.
    load_spec: tuple[str, dict[str, Any]] | None = None

    @classmethod
    @abc.abstractmethod
    def from_pretrained(
        cls,
        weights: Any = None,
        *,
        base_model: Any = None,
        revision: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> Restorer:
        """Load the restorer; ``None`` arguments fall back to the official defaults."""

    @abc.abstractmethod
    def restore(self, image: Any, *, prompt: str | Sequence[str] | None = None, seed: int | None = None,
                **kwargs: Any) -> Any:
        """Restore ``image``; see the subclass for its options."""

    def training_forward(self, lq: torch.Tensor, prompt_embeds: torch.Tensor, *,
                         generator: torch.Generator | None = None) -> Any:
        """Differentiable one-step pass for IRIB training, where the restorer is the frozen g (gradients
        flow through it to its input) or, in the baseline, the network being fine-tuned.

        Args:
            lq: (B, 3, H, W) in [-1, 1], already at the output resolution (H, W multiples of 8).
            prompt_embeds: (B, L, D) text embeddings from the restorer's ``encode_prompt(list[str])``.
            generator: draws every random number of the pass (e.g. VAE posterior samples).

        Returns:
            :class:`elqproj.onestep.OneStepOutput`: ``.image`` (B, 3, H, W) in [-1, 1] and ``.x0``, the
            predicted clean latent the VSD regulariser scores.

        Restorers whose capabilities say ``differentiable=True`` implement this and ``encode_prompt``.
        """
        raise ConfigError(
            f"The {self.name} restorer has no differentiable one-step forward, so it cannot serve as g in "
            "IRIB training; use a one-step restorer such as 'osediff' or 's3diff'."
        )

    def accepts(self, option: str) -> bool:
        """Whether :meth:`restore` takes keyword ``option`` (callers pass optional settings only where
        a restorer has them, e.g. ``process_size``)."""
        return option in inspect.signature(self.restore).parameters

    def configure_tiling(self, config: Any) -> None:
        """Use ``config`` (:class:`elqproj.tiling.TilingConfig`) for latent and VAE tiling.

        The default implementation serves restorers built on a :class:`~elqproj.onestep.OneStepSD`
        engine (attribute ``engine``); others override it.

        Raises:
            ConfigError: the restorer's capabilities say it cannot tile.
        """
        if not self.capabilities.supports_tiling:
            raise ConfigError(
                f"The {self.name} restorer cannot tile (capabilities.supports_tiling is False): run it without "
                "tiling options (--tiling auto, no --tile-size), or on smaller images."
            )
        self.engine.tiling = config

    @property
    def device(self) -> torch.device:
        param = next(self.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        param = next(self.parameters(), None)
        return param.dtype if param is not None else torch.float32

    def extra_repr(self) -> str:
        return f"name={self.name!r}, scale={self.capabilities.scale}, steps={self.capabilities.steps}"


# Adding a built-in restorer = its module plus one line here ("module:Class", imported on first use:
# importing a restorer pulls in its model code).
RESTORERS: Registry[type[Restorer]] = Registry(
    "restorer",
    group=ENTRY_POINT_GROUP,
    builtin={
        "osediff": RegistryEntry("elqproj.adapters.osediff:OSEDiffRestorer"),
        "s3diff": RegistryEntry("elqproj.adapters.s3diff:S3DiffRestorer"),
        "seesr": RegistryEntry("elqproj.adapters.seesr:SeeSRRestorer"),
    },
    accepts=lambda obj: isinstance(obj, type) and issubclass(obj, Restorer),
    expected="a Restorer subclass",
    path_form="module:Class",
)


def register_restorer(name: str, restorer: type[Restorer] | str, *, overwrite: bool = False) -> None:
    """Make a restorer class (or its ``"module:Class"`` path) loadable as ``load_restorer(name)``."""
    RESTORERS.register(name, restorer, overwrite=overwrite)


def list_restorers() -> list[str]:
    """Names accepted by :func:`load_restorer`: built-ins, registered ones, and entry points."""
    return RESTORERS.names()


def get_restorer_class(name: str) -> type[Restorer]:
    """The :class:`Restorer` subclass registered as ``name`` (imports its module on first use)."""
    return RESTORERS.get(name)


def load_restorer(name: str, weights: Any = None, **kwargs: Any) -> Restorer:
    """Load a registered restorer: ``load_restorer("osediff", weights=..., base_model=..., device=..., dtype=...)``.

    Every argument is forwarded to the restorer's ``from_pretrained``; unspecified weights and base
    model fall back to the official defaults (downloaded from the Hub and cached).
    """
    restorer = get_restorer_class(name).from_pretrained(weights, **kwargs)
    options = {"weights": weights, **{k: v for k, v in kwargs.items() if k not in ("device", "dtype")}}
    restorer.load_spec = (name.lower(), options)
    return restorer
