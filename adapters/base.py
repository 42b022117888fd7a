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
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar, Literal

import torch

from elqproj.devices import check_seeds, resolve_dtype
from elqproj.errors import ConfigError, InvalidInputError, WeightsNotFoundError
from elqproj.registry import Registry, RegistryEntry

__all__ = [
    "RestorerCapabilities",
    "ValueRange",
    "Restorer",
    "register_restorer",
    "load_restorer",
    "identify_restorer",
    "list_restorers",
    "get_restorer_class",
    "RESTORERS",
    "ENTRY_POINT_GROUP",
]

ENTRY_POINT_GROUP = "elqproj.restorers"

#: The value range of :meth:`Restorer.restore_batch`'s input and output: "unit" [0, 1], "signed" [-1, 1].
ValueRange = Literal["unit", "signed"]


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
        supports_tiling: takes a :class:`~elqproj.tiling.TilingConfig` (:meth:`Restorer.configure_tiling`,
            ``restore_batch(tiling=...)``).
        size_multiple: :meth:`Restorer.restore_batch` needs H and W to be multiples of it (px): the VAE's
            downsampling factor of the loaded model, or more where the official code pads further
            (S3Diff: 64).
        min_side: the smallest H and W (px) :meth:`Restorer.restore_batch` takes (the loaded UNet's depth).
        pad_mode: how a caller pads an image up to ``size_multiple`` (the official code's choice):
            ``"reflect"``, ``"replicate"`` or ``"constant"``.
        value_range: the range of :meth:`Restorer.restore_batch`'s input and output, the model's own
            (``"signed"`` [-1, 1] for a VAE input; ``"unit"`` [0, 1] for SeeSR's ControlNet condition).
        color_fix: the colour correction the official script applies by default ("adain", "wavelet").
        per_image_seeds: :meth:`Restorer._restore_batch` takes one seed per image (a list) and draws for
            each image what a batch of one would draw with its seed; otherwise :meth:`Restorer.restore_batch`
            runs a batch with per-image seeds one image at a time.

    The class attribute holds the defaults a restorer declares before loading; a loaded restorer's
    ``capabilities`` describe that model (e.g. ``size_multiple`` from its VAE) and are enforced by
    :func:`load_restorer` (dtype) and :meth:`Restorer.restore_batch` (sizes, tiling, image features).
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
    size_multiple: int = 8
    min_side: int = 8
    pad_mode: Literal["reflect", "replicate", "constant"] = "reflect"
    value_range: ValueRange = "signed"
    color_fix: str = "adain"
    per_image_seeds: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def supports_dtype(self, dtype: torch.dtype) -> bool:
        """Whether the model runs correctly in ``dtype`` (float32 always)."""
        return {torch.float16: self.supports_fp16, torch.bfloat16: self.supports_bf16}.get(dtype, True)


class Restorer(torch.nn.Module, abc.ABC):
    """A frozen restorer g: LQ image -> HQ image.

    A restorer has two faces (docs/adding-a-restorer.md lists every duty):

    * the **tensor core** :meth:`restore_batch`, which the pipeline calls: a batch already sized to the
      capabilities, in the model's value range, on the model's device, restored at that same size;
    * the **edge** :meth:`restore`, for users and for golden parity: any image kind in, the official
      script's sizing (PIL resizing, ×``upscale``) and colour fix around the tensor core, the input's
      kind out (helpers shared by the adapters live in :mod:`elqproj.adapters.official_edge`).

    Subclasses implement :meth:`from_pretrained`, :meth:`restore` and :meth:`_restore_batch`; :attr:`name`
    is a class attribute, :attr:`capabilities` a class attribute (defaults) that a loaded model may
    refine with :meth:`refine_capabilities`. Restorers declaring ``differentiable=True`` also implement
    :meth:`training_forward` and ``encode_prompt``; those declaring ``shares_projector_base=True`` accept
    ``engine=`` (a :class:`~elqproj.onestep.OneStepSD`) in ``from_pretrained`` to attach to.
    """

    name: ClassVar[str]
    capabilities: RestorerCapabilities
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
        """Restore ``image`` the way the official script does (sizing, ×``upscale``, colour fix); see the
        subclass for its options."""

    @classmethod
    def recognizes(cls, checkpoint: dict[str, Any]) -> bool:
        """Whether ``checkpoint`` (the key -> value dict :func:`elqproj.hub.load_checkpoint` reads) is this
        restorer's weights file; :func:`identify_restorer` asks every registered restorer. Default: no."""
        return False

    @classmethod
    def tiny_random(cls, engine: Any, *, seed: int = 0) -> Restorer:
        """A randomly initialised instance of this restorer's architecture on ``engine`` (a tiny
        :class:`~elqproj.onestep.OneStepSD` built in memory), for ``elqproj selftest``: it exercises the
        code paths on a device and dtype, nothing about quality. Optional: the default raises
        ``NotImplementedError`` and the self-test lists the restorer as skipped."""
        raise NotImplementedError(f"the {cls.name} restorer has no tiny random model")

    def refine_capabilities(self, **changes: Any) -> None:
        """Describe this loaded model: ``capabilities`` becomes the class defaults with ``changes``."""
        self.capabilities = replace(type(self).capabilities, **changes)

    def restore_batch(
        self,
        lq: torch.Tensor,
        *,
        prompts: Sequence[str] | None = None,
        image_features: torch.Tensor | None = None,
        seed: int | Sequence[int] | None = None,
        tiling: Any = None,
        progress: bool = False,
        **options: Any,
    ) -> torch.Tensor:
        """The tensor core: restore a sized batch at its own size.

        Args:
            lq: ``(B, 3, H, W)`` float, in ``capabilities.value_range``, on :attr:`device` in :attr:`dtype`;
                H and W multiples of ``capabilities.size_multiple`` and at least ``capabilities.min_side`` (already at the output resolution:
                the core does not rescale and applies no colour fix).
            prompts: one text per image, as the restorer takes them (SeeSR: the tags its template wraps);
                ``None``: the restorer's own default.
            image_features: a tagger's image embeddings ``(B or 1, N, D)``, only for a restorer whose
                capabilities say ``uses_image_features``.
            seed: makes the run reproducible (the same draws as :meth:`restore` with that seed); a list of
                one seed per image gives each image the draws of a batch of one with its seed.
            tiling: a :class:`~elqproj.tiling.TilingConfig` for this call (``None``: the restorer's own).
            progress: show the restorer's progress bar where it has one (multi-step samplers).
            options: the restorer's own sampling options (see its :meth:`restore`), e.g. ``steps``.

        Returns:
            ``(B, 3, H, W)`` float in ``capabilities.value_range`` on :attr:`device`.

        Raises:
            InvalidInputError: ``lq`` is not such a batch, or ``prompts`` / ``image_features`` do not fit it.
            ConfigError: ``tiling`` or ``image_features`` given to a restorer that declares it cannot use them.
        """
        caps = self.capabilities
        if not isinstance(lq, torch.Tensor) or lq.ndim != 4 or lq.shape[1] != 3 or not lq.is_floating_point():
            got = f"{lq.dtype} {tuple(lq.shape)}" if isinstance(lq, torch.Tensor) else type(lq).__name__
            raise InvalidInputError(f"restore_batch takes a float tensor (B, 3, H, W), got {got}.")
        seed = check_seeds(seed, lq.shape[0])
        height, width = lq.shape[-2:]
        if height % caps.size_multiple or width % caps.size_multiple:
            raise InvalidInputError(
                f"The {self.name} restorer needs H and W to be multiples of {caps.size_multiple}, got {height}x{width}: "
                f"pad the batch (elqproj.imageio.pad_to_multiple(x, {caps.size_multiple}, mode={caps.pad_mode!r}))."
            )
        if min(height, width) < caps.min_side:
            raise InvalidInputError(
                f"The {self.name} restorer needs H and W of at least {caps.min_side} px, got {height}x{width}: "
                "enlarge the image first."
            )
        self.check_options(options)
        if lq.device != self.device or lq.dtype != self.dtype:
            raise InvalidInputError(
                f"restore_batch takes the batch on the restorer's device and dtype ({self.device}, {self.dtype}), "
                f"got {lq.device}, {lq.dtype}: move it with lq.to(restorer.device, restorer.dtype)."
            )
        if prompts is not None and (isinstance(prompts, str) or len(prompts) != lq.shape[0]):
            raise InvalidInputError(f"prompts must be a list of {lq.shape[0]} texts (one per image), got {prompts!r}.")
        if tiling is not None and not caps.supports_tiling:
            raise ConfigError(f"The {self.name} restorer cannot tile (capabilities.supports_tiling is False).")
        if image_features is not None and not caps.uses_image_features:
            raise ConfigError(f"The {self.name} restorer takes no image features (capabilities.uses_image_features is False).")
        prompts = None if prompts is None else list(prompts)
        if isinstance(seed, list) and not caps.per_image_seeds:
            return torch.cat([
                self._restore_batch(lq[i:i + 1], prompts=None if prompts is None else prompts[i:i + 1],
                                    image_features=_row(image_features, i), seed=one, tiling=tiling,
                                    progress=progress, **options)
                for i, one in enumerate(seed)
            ])
        return self._restore_batch(lq, prompts=prompts, image_features=image_features, seed=seed, tiling=tiling,
                                   progress=progress, **options)

    def check_options(self, options: Any) -> None:
        """Refuse sampling option names :meth:`restore_batch` would not take (before any work is done: a
        pipeline checks them before f runs).

        Raises:
            InvalidInputError: naming the unknown options and where the known ones are documented.
        """
        unknown = set(options) - set(inspect.signature(self._restore_batch).parameters)
        if unknown:
            raise InvalidInputError(
                f"Unknown options for the {self.name} restorer: {sorted(unknown)}. See help({type(self).__name__}.restore)."
            )

    @abc.abstractmethod
    def _restore_batch(self, lq: torch.Tensor, *, prompts: list[str] | None, image_features: torch.Tensor | None,
                       seed: int | list[int] | None, tiling: Any, progress: bool, **options: Any) -> torch.Tensor:
        """:meth:`restore_batch` after its checks (same arguments and result; ``seed`` is a list only for a
        restorer whose capabilities say ``per_image_seeds``)."""

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


def _row(features: torch.Tensor | None, index: int) -> torch.Tensor | None:
    """Image ``index``'s rows of a tagger's image features (B or 1, N, D): a batch of one shares its row."""
    if features is None or features.shape[0] == 1:
        return features
    return features[index:index + 1]


def register_restorer(name: str, restorer: type[Restorer] | str, *, overwrite: bool = False) -> None:
    """Make a restorer class (or its ``"module:Class"`` path) loadable as ``load_restorer(name)``."""
    RESTORERS.register(name, restorer, overwrite=overwrite)


def list_restorers() -> list[str]:
    """Names accepted by :func:`load_restorer`: built-ins, registered ones, and entry points."""
    return RESTORERS.names()


def get_restorer_class(name: str) -> type[Restorer]:
    """The :class:`Restorer` subclass registered as ``name`` (imports its module on first use)."""
    return RESTORERS.get(name)


def identify_restorer(weights: Any, **resolve_options: Any) -> str:
    """The registered restorer whose checkpoint format ``weights`` is (a file path, Hub file or URL, as
    ``load_restorer`` takes it): read without executing code, and recognised by each restorer's
    :meth:`Restorer.recognizes`.

    Raises:
        CheckpointMismatchError: no registered restorer recognises the file (the message names the ones
            asked), or more than one does.
    """
    from elqproj.errors import CheckpointMismatchError
    from elqproj.hub import load_checkpoint, resolve_file

    path = resolve_file(weights, **resolve_options)
    checkpoint = load_checkpoint(path)
    names = list_restorers()
    matches = [name for name in names if get_restorer_class(name).recognizes(checkpoint)]
    if len(matches) != 1:
        found = "none" if not matches else " and ".join(matches)
        raise CheckpointMismatchError(
            f"Cannot tell which restorer {path} belongs to ({found} of {', '.join(names)} recognise it): "
            "name it, e.g. load_restorer('osediff', weights=...)."
        )
    return matches[0]


def load_restorer(name: str | None, weights: Any = None, **kwargs: Any) -> Restorer:
    """Load a registered restorer: ``load_restorer("osediff", weights=..., base_model=..., device=..., dtype=...)``.

    Every argument is forwarded to the restorer's ``from_pretrained``; unspecified weights and base
    model fall back to the official defaults (downloaded from the Hub and cached). ``name=None`` takes
    the restorer whose checkpoint format ``weights`` is (:func:`identify_restorer`).

    Raises:
        ConfigError: the restorer declares that it cannot run in the requested ``dtype``.
        WeightsNotFoundError: a file could not be found or downloaded; the message says which option
            gives it (weights, base model) and what each defaults to.
    """
    if name is None:
        if weights is None:
            raise InvalidInputError("load_restorer(None, ...) recognises the restorer from its weights: pass weights=.")
        name = identify_restorer(weights)
    cls = get_restorer_class(name)
    dtype = resolve_dtype(kwargs.get("dtype"))
    if not cls.capabilities.supports_dtype(dtype):
        raise ConfigError(
            f"The {cls.name} restorer does not run correctly in {dtype} (its capabilities say so): load it "
            "with dtype=torch.float32, or another dtype it supports."
        )
    try:
        restorer = cls.from_pretrained(weights, **kwargs)
    except WeightsNotFoundError as exc:
        caps = cls.capabilities
        raise WeightsNotFoundError(
            f"{exc}\nThe {cls.name} restorer needs its weights (weights=, CLI --backend-weights; default "
            f"{caps.default_weights or 'none: pass them'}) and its base model (base_model=, CLI --base-model; default "
            f"{caps.base_model or 'none'}); defaults are downloaded on first use and cached, and HF_HUB_OFFLINE=1 "
            "reads the cache only."
        ) from exc
    options = {"weights": weights, **{k: v for k, v in kwargs.items() if k not in ("device", "dtype")}}
    restorer.load_spec = (name.lower(), options)
    return restorer
