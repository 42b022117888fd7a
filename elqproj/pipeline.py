"""ELQ -> LQ -> HQ orchestration with Look Forward Once (IRIB paper, eq. 20-22).

The pipeline owns no math: it sizes the input, asks the prompt extractor Y for prompts, runs the
projector f (re-using the prompt-independent VAE latent of the ELQ image in every LFO pass), and hands
the LQ proxy to the frozen restorer g::

    c¹ = Y(x);  x̂¹ = f(x; c¹)
    c^{k+1} = Y(x̂^k);  x̂^{k+1} = f(x; c^{k+1})        k = 1 … lfo
    x̂_HQ = g(x̂^{lfo+1}; Y(x̂^{lfo+1}))

so Y runs lfo + 2 times and the VAE encoder of f once per image.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import __version__, imageio
from .colorfix import apply_color_fix, check_color_fix
from .devices import check_seed, check_seeds, synchronize
from .auto import AutoConfig
from .errors import ConfigError, InvalidInputError, WeightsNotFoundError
from .prompts.base import PromptResult
from .validation import ConfigModel
from .value_range import signed_to_unit, unit_to_signed

if TYPE_CHECKING:
    from .adapters.base import Restorer

__all__ = ["RestorationPipeline", "RestorationResult", "LFO_AUTO_CAP", "LFO_MAX", "processing_size"]

logger = logging.getLogger(__name__)

#: Upper bound of refinement passes for ``lfo="auto"`` (the paper finds 2 best; it oscillates after).
LFO_AUTO_CAP = 4
#: The most refinement passes a call may ask for: far beyond the paper's best (2), where passes only
#: oscillate; a larger ``lfo`` is an error rather than minutes of repeated work.
LFO_MAX = 8


@dataclass
class RestorationResult:
    """What :meth:`RestorationPipeline.__call__` returns.

    Attributes:
        image: the HQ restoration, in the input's kind (PIL in -> PIL out, tensors -> (B,3,H,W) [0,1]).
        lq: the LQ proxy after the last projector pass, in the input's kind.
        prompts: the prompt of every pass in order, [c¹, …, c^{lfo+1}, c_LQ] (c_LQ conditions g); for
            a batch, each entry is a list with one prompt per image.
        lq_passes: the LQ proxy of every projector pass, (B,3,H,W) float tensors in [0,1] on the CPU (with a
            :attr:`~RestorationPipeline.preview_decoder`, every pass but the last is its preview decode).
        timings: seconds per stage: "prompt" (Y on the input and on the final LQ proxy), "project" (f's
            first pass), "lfo" (every Look-Forward-Once round: Y on the proxy and f again; only when
            ``lfo`` is not 0), "restore" (g) and "total" (the whole call, sizing and conversions included).
        lfo_passes: refinement passes actually run (fewer than asked when LFO stopped early).
        lfo_stop: why LFO ran fewer passes than asked (``None`` when it ran them all): a pass's prompts
            equal the previous ones, so every further pass would repeat the same f pass (with
            ``lfo="auto"``: the tag sets no longer change).
        hq_rounds: with ``return_rounds=True``, g's output on the LQ proxy of every projector pass, each
            conditioned on Y of that proxy as the final one is (the paper's Figure 10: metric per LFO round):
            (B,3,H,W) float tensors in [0,1] on the CPU, the last one ``image``'s; else ``None``.
        decision: with ``mode="auto"``, what auto mode chose and why (for a batch, one per image):
            ``{"musiq": 31.2, "severity": "severe", "projector": True, "lfo": 2, "strength": 1.0}`` (see
            :mod:`elqproj.auto`), with ``"degradations"`` (DA-CLIP's probability of each degradation type)
            when the prompt extractor is ``daclip``; ``None`` otherwise.
    """

    image: Any
    lq: Any
    prompts: list[Any]
    lq_passes: list[torch.Tensor]
    timings: dict[str, float] = field(default_factory=dict)
    lfo_passes: int = 0
    lfo_stop: str | None = None
    hq_rounds: list[torch.Tensor] | None = None
    decision: dict[str, Any] | list[dict[str, Any]] | None = None


class _Stopwatch:
    """Seconds per stage (synchronised with the device); names the running stage on the progress bar and
    enters the pipeline's ``stage_hooks`` around each stage (outside the timed span)."""

    def __init__(self, device: torch.device, bar: Any, hooks: Sequence[Callable[[str], AbstractContextManager]] = ()
                 ) -> None:
        self.device = device
        self.bar = bar
        self.hooks = tuple(hooks)
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        self.bar.set_postfix_str(stage)
        with ExitStack() as hooks:
            for hook in self.hooks:
                hooks.enter_context(hook(stage))
            synchronize(self.device)
            start = time.perf_counter()
            try:
                yield
            finally:
                synchronize(self.device)
                self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - start


class _ComponentSpec(ConfigModel):
    """A component loaded by registered name: ``load_<kind>(name, **options)`` loads it again."""

    name: str
    options: dict[str, Any] = {}


class _PipelineSpec(ConfigModel):
    """``pipeline.json``: the projector's subfolder (or none: g alone), g and Y by name and options."""

    projector: str | None
    restorer: _ComponentSpec
    prompt_extractor: _ComponentSpec | None = None
    elqproj_version: str = __version__


def _component_spec(component: Any, kind: str, loader: str) -> _ComponentSpec:
    """How ``component`` was loaded (``load_spec``, set by the registry loaders), as JSON-safe options."""
    spec = getattr(component, "load_spec", None)
    if spec is None:
        raise ConfigError(
            f"The {kind} {component!r} was not loaded by name, so the pipeline cannot record how to load it "
            f"again: load it with {loader}(name, ...) or RestorationPipeline.from_components(...)."
        )
    name, options = spec
    safe: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise ConfigError(
                f"The {kind} {name!r} was loaded with {key}={value!r}, which pipeline.json cannot record; "
                "pass it as a path, Hub id, number or text."
            )
        safe[key] = value
    return _ComponentSpec(name=name, options=safe)


def _tag_set(text: str) -> frozenset[str]:
    return frozenset(t.strip().lower() for t in text.split(",") if t.strip())


#: The pipeline's own file in a saved pipeline directory (components in subfolders / by name).
PIPELINE_CONFIG_NAME = "pipeline.json"
#: How a saved projector is found again: the class, by path (as diffusers' model_index.json names its
#: components), so that this module never imports the projector module (which builds on this one).
PROJECTOR_CLASS = "elqproj.projector:Projector"
PROJECTOR_SUBFOLDER = "projector"


class RestorationPipeline:
    """The whole restoration: sizing, the prompt extractor Y, the projector f (with Look Forward Once)
    and the frozen restorer g. The pipeline owns its three components.

    Build it from loaded components, or with :meth:`from_components` from names and options (then it can
    :meth:`save_pretrained` and :meth:`from_pretrained` the whole setup)::

        pipe = RestorationPipeline.from_components(projector="my-projector", restorer="seesr",
                                                   restorer_options={"weights": "path/to/seesr"},
                                                   prompt_extractor="dape",
                                                   prompt_extractor_options={"weights": "DAPE.pth"})
        result = pipe("photo.jpg", lfo=2, seed=0)

    Args:
        restorer: g, a loaded :class:`~elqproj.adapters.base.Restorer`.
        projector: f, a loaded :class:`~elqproj.projector.Projector`; ``None``: the identity (g alone on
            the sized input; Look Forward Once needs a projector).
        prompt_extractor: Y, a :class:`~elqproj.prompts.PromptExtractor` or a callable
            ``images -> list[str]``; ``None``: no extraction (the empty prompt, unless a call passes
            ``prompt=``).
    """

    def __init__(self, restorer: Restorer, *, projector: Any = None, prompt_extractor: Any = None) -> None:
        from .adapters.base import Restorer
        from .prompts import PromptExtractor, as_prompt_extractor

        if not isinstance(restorer, Restorer):
            raise InvalidInputError(
                f"restorer must be a loaded Restorer, got {type(restorer).__name__}; pass a name to "
                "RestorationPipeline.from_components(restorer=...) to load one."
            )
        if projector is not None and not all(hasattr(projector, a) for a in ("encode_image", "encode_prompt", "engine")):
            raise InvalidInputError(
                f"projector must be a loaded Projector or None, got {type(projector).__name__}; pass a directory or "
                "Hub id to RestorationPipeline.from_components(projector=...) to load one."
            )
        if isinstance(prompt_extractor, str):
            raise InvalidInputError(
                f"prompt_extractor={prompt_extractor!r} is a name: load it with "
                "RestorationPipeline.from_components(prompt_extractor=...); a fixed text is the call's prompt=."
            )
        if prompt_extractor is not None and not isinstance(prompt_extractor, PromptExtractor):
            prompt_extractor = as_prompt_extractor(prompt_extractor)  # a callable images -> list[str]
        self.restorer = restorer
        self.projector = projector
        self.prompt_extractor = prompt_extractor
        self.tiling = None  # None: each model's own tiling (see configure_tiling)
        #: Context-manager factories entered around every stage of a call ("prompt", "project", "lfo",
        #: "rounds", "restore"), given the stage's name, outside its timing: e.g. a FLOP counter per stage
        #: (elqproj.evaluation.complexity).
        self.stage_hooks: list[Callable[[str], AbstractContextManager]] = []
        #: Opt-in decoder of the LFO passes' previews (:mod:`elqproj.preview`, TAESD); ``None``: the full VAE
        #: decoder everywhere. The LQ proxy g gets is always decoded by the full decoder.
        self.preview_decoder: Any = None
        #: What ``mode="auto"`` does per severity (thresholds, the scorer, each bucket's f / LFO / strength).
        self.auto_config = AutoConfig()
        #: The no-reference scorer of auto mode, loaded on its first use (its weights download once).
        self.severity_scorer: Any = None

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_components(
        cls,
        *,
        restorer: Any = "osediff",
        restorer_options: dict[str, Any] | None = None,
        projector: Any = None,
        projector_options: dict[str, Any] | None = None,
        prompt_extractor: Any = None,
        prompt_extractor_options: dict[str, Any] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        compile: bool | dict[str, Any] = False,
        preview_decoder: Any = None,
    ) -> RestorationPipeline:
        """Load the components named here (loaded objects are used as they are).

        Args:
            restorer: a registered restorer name (``"osediff"``, ``"seesr"``, ``"s3diff"``, …) or a loaded
                Restorer; ``restorer_options`` go to its ``from_pretrained`` (``weights``, ``base_model``,
                ``revision``, …). A restorer that declares ``shares_projector_base`` runs on the
                projector's own base (one copy of the SD weights) unless ``base_model`` is given.
            projector: a projector directory or Hub id, a loaded Projector, or ``None`` (g alone);
                ``projector_options`` go to ``Projector.from_pretrained`` (``revision``, ``base_model``).
            prompt_extractor: a registered extractor name (``"ram"``, ``"dape"``, ``"vlm"``; ``"none"``
                is the same as ``None``), a loaded PromptExtractor or callable, or ``None``;
                ``prompt_extractor_options`` go to :func:`~elqproj.prompts.load_prompt_extractor`
                (``weights``, ``revision``, …).
            device, dtype: where everything loaded here runs (default: CUDA if available, float32; the
                extractor stays float32 unless its options say otherwise). A loaded projector decides
                for the restorer.
            compile: ``True`` (or ``torch.compile`` options as a dict) compiles the heavy networks once
                loaded (:meth:`compile`).
            preview_decoder: ``"taesd"`` (or an AutoencoderTiny folder / Hub id, or a loaded
                :class:`~elqproj.preview.PreviewDecoder`) decodes the LFO passes for the prompt extractor
                (:attr:`preview_decoder`); ``None``: the full decoder.
        """
        from .adapters.base import Restorer, get_restorer_class, load_restorer
        from .prompts import load_prompt_extractor
        from .registry import import_object

        options = dict(restorer_options or {})
        if isinstance(projector, (str, os.PathLike)):
            projector_class = import_object(PROJECTOR_CLASS)
            projector = projector_class.from_pretrained(projector, device=device, dtype=dtype,
                                                        **(projector_options or {}))
        elif projector_options:
            raise InvalidInputError("projector_options apply only when projector is a directory or Hub id.")
        if projector is not None:
            device, dtype = projector.device, projector.dtype
        if isinstance(restorer, str):
            if (projector is not None and get_restorer_class(restorer).capabilities.shares_projector_base
                    and "base_model" not in options):
                options["base_model"] = projector.config.base_model
                options.setdefault("revision", projector.config.base_revision)
            restorer = load_restorer(restorer, options.pop("weights", None), device=device, dtype=dtype, **options)
        elif not isinstance(restorer, Restorer):
            raise InvalidInputError(
                f"restorer must be a registered name or a loaded Restorer, got {type(restorer).__name__}."
            )
        elif options:
            raise InvalidInputError("restorer_options apply only when restorer is a name.")
        extractor_options = dict(prompt_extractor_options or {})
        if isinstance(prompt_extractor, str) and prompt_extractor.strip().lower() == "none":
            prompt_extractor = None
        if isinstance(prompt_extractor, str):
            extractor_options.setdefault("device", device)
            prompt_extractor = load_prompt_extractor(prompt_extractor, **extractor_options)
        elif extractor_options:
            raise InvalidInputError("prompt_extractor_options apply only when prompt_extractor is a name.")
        pipeline = cls(restorer, projector=projector, prompt_extractor=prompt_extractor)
        if isinstance(preview_decoder, (str, os.PathLike)):
            from .preview import load_preview_decoder

            preview_decoder = load_preview_decoder(preview_decoder, device=device, dtype=dtype)
        pipeline.preview_decoder = preview_decoder
        if compile:
            pipeline.compile(**(compile if isinstance(compile, dict) else {}))
        return pipeline

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
    ) -> RestorationPipeline:
        """Load a setup written by :meth:`save_pretrained`: the projector from its subfolder, g and Y by
        name with their recorded options, on ``device`` / ``dtype``."""
        root = Path(directory)
        path = root / PIPELINE_CONFIG_NAME
        if not path.is_file():
            raise WeightsNotFoundError(f"{root} is not a saved pipeline: {PIPELINE_CONFIG_NAME} is missing.")
        spec = _PipelineSpec.model_validate_json(path.read_text())
        projector = str(root / spec.projector) if spec.projector else None
        extractor = spec.prompt_extractor
        return cls.from_components(
            restorer=spec.restorer.name, restorer_options=spec.restorer.options, projector=projector,
            prompt_extractor=extractor.name if extractor else None,
            prompt_extractor_options=extractor.options if extractor else None, device=device, dtype=dtype,
        )

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the setup to ``directory``: ``pipeline.json`` (which g and Y, with the options they were
        loaded with) and the projector's own files in ``projector/``. g and Y must have been loaded by
        name (their weights are referenced, not copied)."""
        root = Path(directory)
        restorer_spec = _component_spec(self.restorer, "restorer", "load_restorer")
        extractor_spec = None
        if self.prompt_extractor is not None:
            extractor_spec = _component_spec(self.prompt_extractor, "prompt extractor", "load_prompt_extractor")
        root.mkdir(parents=True, exist_ok=True)
        if self.projector is not None:
            self.projector.save_pretrained(root / PROJECTOR_SUBFOLDER)
        spec = _PipelineSpec(projector=PROJECTOR_SUBFOLDER if self.projector is not None else None,
                             restorer=restorer_spec, prompt_extractor=extractor_spec)
        (root / PIPELINE_CONFIG_NAME).write_text(spec.model_dump_json(indent=2) + "\n")
        return root

    # -------------------------------------------------------------- settings
    @property
    def device(self) -> torch.device:
        return self.projector.device if self.projector is not None else self.restorer.device

    @property
    def dtype(self) -> torch.dtype:
        return self.projector.dtype if self.projector is not None else self.restorer.dtype

    @property
    def min_image_side(self) -> int:
        """The smallest side (px) the pipeline runs at: the projector's minimum, else 8."""
        return self.projector.engine.min_image_side if self.projector is not None else 8

    def compile(self, **options: Any) -> list[str]:
        """``torch.compile`` the heavy networks in place (``nn.Module.compile``): every distinct UNet, VAE and
        ControlNet of f and g (a base shared by f and g is compiled once). ``options`` go to
        ``torch.compile`` (``mode="max-autotune"``, ``backend=…``, ``dynamic=…``). The first call at each
        image size is slow (compilation); later calls are faster on GPUs. Returns the compiled modules' names.

        Raises:
            ConfigError: ``torch.compile`` refuses the options.
        """
        compiled: dict[int, str] = {}
        for owner, component in (("projector", self.projector), ("restorer", self.restorer)):
            for name, module in _heavy_modules(component, owner):
                if id(module) not in compiled:
                    try:
                        module.compile(**options)
                    except (TypeError, RuntimeError, ValueError) as exc:
                        raise ConfigError(f"torch.compile refused the options {options}: {exc}") from None
                    compiled[id(module)] = name
        return list(compiled.values())

    def configure_tiling(self, config: Any) -> None:
        """Use ``config`` (:class:`~elqproj.tiling.TilingConfig`) for f's and g's latent and VAE tiling in
        this pipeline's calls (passed per call: an engine shared with other pipelines is not changed).

        Raises:
            ConfigError: g cannot tile (its capabilities say ``supports_tiling=False``).
        """
        if not self.restorer.capabilities.supports_tiling:
            raise ConfigError(
                f"The {self.restorer.name} restorer cannot tile (capabilities.supports_tiling is False): run it "
                "without tiling options (--tiling auto, no --tile-size), or on smaller images."
            )
        self.tiling = config

    @torch.no_grad()
    def __call__(
        self,
        image: Any,
        *,
        prompt: str | Sequence[str] | None = None,
        lfo: int | str = 0,
        seed: int | Sequence[int] | None = None,
        upscale: int = 1,
        process_size: int = 512,
        sample_posterior: bool = True,
        restorer_options: dict[str, Any] | None = None,
        progress: bool = True,
        max_pixels: int | None = None,
        return_rounds: bool = False,
        strength: float | Sequence[float] = 1.0,
        mode: str = "fixed",
    ) -> RestorationResult:
        """Restore an extreme-LQ image.

        Args:
            image: PIL image, path, numpy array, (B,3,H,W) float tensor in [0,1], or a list of same-size
                images.
            prompt: a fixed text for every image (or one per image) instead of the prompt extractor's;
                ``None``: the extractor's prompts (the empty prompt without one). The extractor still
                supplies image features to a restorer that uses them (SeeSR).
            lfo: refinement passes k (0 = no LFO; the paper recommends 2; at most :data:`LFO_MAX`), or
                "auto": stop when the tag set stops changing, at most :data:`LFO_AUTO_CAP` passes. Passes
                stop early when a pass's prompts equal the previous ones (the rest would repeat it; see
                ``RestorationResult.lfo_stop``). Needs a projector. A list gives each image of a batch its
                own number of passes (an image whose passes are done keeps its proxy and prompt).
            seed: makes the random draws of f and g reproducible (VAE posterior samples; g's sampler). A
                list of one seed per image gives each image of a batch exactly the draws it gets when
                restored alone with its seed (:meth:`restore_folder` derives them from file names).
            upscale: enlargement before f: the ELQ image is enlarged (bicubic) by ``upscale``; f and g
                then run at that size (g restores without rescaling), as in training where ELQ, LQ and HQ
                share one size. The output is ``upscale`` times the input unless ``process_size`` enlarges
                it further.
            process_size: if the enlarged image's short side is below this, it is enlarged further so
                the short side equals it (SD-based models work poorly below 512 px); 0 disables. An image
                smaller than the models' minimum side is padded (reflected) to it and cropped back.
            restorer_options: g's own options (its ``restore``'s sampling options, e.g. SeeSR's ``steps``), and
                ``color_fix`` (default: g's official one, ``restorer.capabilities.color_fix``).
            progress: show a progress bar over the stages, naming the running one (prompt, project, lfo,
                restore), and g's own bar where it has one (SeeSR's steps); ``False`` hides them.
            max_pixels: the pixel budget of the size f and g process (after ``upscale`` and
                ``process_size``), checked before anything is allocated; default ``ELQPROJ_MAX_PIXELS`` or
                8192².
            return_rounds: also run g on the LQ proxy of every earlier pass (``RestorationResult.hq_rounds``;
                costs one more Y and g call per pass, timed as the "rounds" stage).
            strength: how far f moves the input, in [0, 1] (one value, or one per image): every LQ proxy is
                ``(1 - strength) · x + strength · f(x)`` in pixels, so 0 gives g exactly the sized input (f
                does not run when every image has 0) and 1 is the trained projector. The fidelity/realism
                knob: lower keeps more of the input's own pixels, higher lets f replace more of them.
            mode: "fixed" (the settings above) or "auto": a no-reference IQA score of each input
                (MUSIQ by default) picks whether f runs, the LFO passes and the strength per image
                (:attr:`auto_config`, :mod:`elqproj.auto`); ``RestorationResult.decision`` says what was
                chosen and why. Needs a projector; leave ``lfo`` and ``strength`` unset.

        Raises:
            ImageTooLargeError: the processed size exceeds ``max_pixels``.
            InvalidInputError: ``lfo``, ``upscale``, ``strength``, ``mode`` or ``restorer_options`` are out of
                range.
        """
        if mode not in ("fixed", "auto"):
            raise InvalidInputError(f"mode must be 'fixed' or 'auto', got {mode!r}.")
        if mode == "auto" and (lfo != 0 or strength != 1.0):
            raise InvalidInputError("mode='auto' chooses the LFO passes and the strength of each image: leave lfo and "
                                    "strength unset (tune the choices with pipeline.auto_config).")
        if mode == "auto" and self.projector is None:
            raise InvalidInputError("mode='auto' chooses whether the projector runs, and this pipeline has none (g "
                                    "alone); build the pipeline with a projector.")
        if isinstance(lfo, (list, tuple)):
            for count in lfo:
                _check_lfo(count, allow_auto=False)
        else:
            _check_lfo(lfo, allow_auto=True)
        if (any(lfo) if isinstance(lfo, (list, tuple)) else lfo) and self.projector is None:
            raise InvalidInputError(
                f"lfo={lfo!r}: Look Forward Once re-runs the projector, and this pipeline has none (g alone); "
                "use lfo=0, or build the pipeline with a projector."
            )
        if not isinstance(upscale, int) or isinstance(upscale, bool) or upscale < 1:
            raise InvalidInputError(f"upscale must be a positive integer, got {upscale!r}.")
        if not isinstance(process_size, int) or isinstance(process_size, bool) or process_size < 0:
            raise InvalidInputError(f"process_size must be a pixel count >= 0 (0: no enlargement), got {process_size!r}.")
        if not isinstance(seed, (list, tuple)):
            check_seed(seed)
        self.check_restorer_options(restorer_options)
        start = time.perf_counter()

        x, meta = imageio.to_tensor(image)
        batch = x.shape[0]
        seed = check_seeds(seed, batch)
        strengths = _per_image(strength, batch, "strength", _check_strength)
        limits = _per_image(lfo, batch, "lfo", lambda value: value) if isinstance(lfo, (list, tuple)) else None
        fixed = None if prompt is None else _fixed_texts(prompt, batch)
        imageio.check_processing_size(tuple(x.shape[-2:]), processing_size(*x.shape[-2:], upscale=upscale,
                                                                            process_size=process_size),
                                      how=f"upscale={upscale}, process_size={process_size}", max_pixels=max_pixels)
        bar = tqdm(desc="restore", disable=not progress, leave=False)
        clock = _Stopwatch(self.device, bar, self.stage_hooks)
        decisions = None
        if mode == "auto":
            from .auto import SeverityScorer, decide

            with clock("severity"):  # on the input as given, before any enlargement
                if self.severity_scorer is None or self.severity_scorer.config != self.auto_config:
                    self.severity_scorer = SeverityScorer(self.auto_config, device=self.device)
                decisions = decide(self.severity_scorer(x), self.auto_config)
            limits = [decision["lfo"] for decision in decisions]
            strengths = [decision["strength"] for decision in decisions]
        x = _enlarge(x, upscale=upscale, process_size=process_size)
        min_side = self.projector.engine.min_image_side if self.projector is not None else 1
        padded, pad = imageio.pad_to_multiple(x, 8, min_side=min_side)
        runs_f = self.projector is not None and any(value > 0 for value in strengths)
        if not runs_f:
            cap = 0
        elif limits is not None:
            cap = max(limits)
        else:
            cap = LFO_AUTO_CAP if lfo == "auto" else lfo
        bar.reset(total=cap + 3)

        def extract(images: torch.Tensor, *, features: bool = False) -> PromptResult:
            if fixed is not None and not (features and self.prompt_extractor is not None):
                return PromptResult(texts=list(fixed))
            if self.prompt_extractor is None:
                return PromptResult(texts=[""] * images.shape[0])
            result = self.prompt_extractor.extract(images)
            return result if fixed is None else PromptResult(texts=list(fixed), image_features=result.image_features)

        with clock("prompt"):
            first = extract(x)
        texts = first.texts
        prompts = [texts]
        if decisions is not None and getattr(first, "degradations", None) is not None:
            for decision, degradations in zip(decisions, first.degradations):  # DA-CLIP: how each input is degraded
                decision["degradations"] = {name: round(value, 4) for name, value in degradations.items()}
        passes = 0
        stop = None
        if not runs_f:
            lq = padded
            lq_passes = []
            bar.update(2)
        else:
            elq = unit_to_signed(padded).to(self.projector.device, self.projector.dtype)
            blend = _strength_blend(strengths, padded.to(self.projector.device))
            # Previews only where a tagger looks at a pass; the proxy g gets is decoded in full below.
            preview = self.preview_decoder is not None and cap > 0 and not return_rounds
            with clock("project"):
                latent = self.projector.encode_image(elq, seed=seed, sample_posterior=sample_posterior,
                                                     tiling=self.tiling)
                image, x0 = self._project(elq, latent, texts, preview=preview)
                lq = blend(image)
            lq_passes = [lq]
            bar.update(2)
            while passes < cap:
                with clock("lfo"):
                    texts = extract(lq).texts
                if limits is not None:  # an image whose passes are done keeps its prompt (and its proxy below)
                    texts = [text if passes < limit else previous
                             for text, previous, limit in zip(texts, prompts[-1], limits)]
                if lfo == "auto" and all(_tag_set(a) == _tag_set(b) for a, b in zip(texts, prompts[-1])):
                    stop = f"the tag sets of pass {passes + 1} equal those of pass {passes}"
                elif texts == prompts[-1]:  # f on the cached latent with the same prompt: the same pass again
                    stop = f"the prompts of pass {passes + 1} equal those of pass {passes}: further passes repeat it"
                if stop is not None:
                    logger.info("LFO stopped after %d of %d passes: %s", passes, cap, stop)
                    break
                prompts.append(texts)
                with clock("lfo"):
                    image, refined_x0 = self._project(elq, latent, texts, preview=preview)
                    refined = blend(image)
                if limits is not None:
                    going_on = torch.tensor([passes < limit for limit in limits], device=refined.device).view(-1, 1, 1, 1)
                    refined = torch.where(going_on, refined, lq)
                    refined_x0 = torch.where(going_on.to(refined_x0.device), refined_x0, x0)
                lq, x0 = refined, refined_x0
                lq_passes.append(lq)
                passes += 1
                bar.update(1)
            if preview:  # the proxy g restores: the last pass's latent through the full decoder
                with clock("project"):
                    lq = blend(signed_to_unit(self.projector.decode_latent(x0, tiling=self.tiling).clamp(-1, 1).float()))
                lq_passes[-1] = lq
        with clock("prompt"):
            result = extract(lq, features=self.restorer.capabilities.uses_image_features)
        prompts.append(result.texts)
        with clock("restore"):
            hq = self._restore(lq, result, seed=seed, progress=progress, options=dict(restorer_options or {}))
        rounds = None
        if return_rounds:  # g on every earlier pass's proxy, conditioned as the final pass is
            rounds = []
            for earlier in lq_passes[:-1]:
                with clock("rounds"):
                    condition = extract(earlier, features=self.restorer.capabilities.uses_image_features)
                    rounds.append(self._restore(earlier, condition, seed=seed, progress=False,
                                                options=dict(restorer_options or {})))
            rounds.append(hq)
        bar.update(bar.total - bar.n)
        bar.close()
        clock.times["total"] = time.perf_counter() - start

        hq = imageio.crop_padding(hq.float().cpu(), pad)
        lq = lq.float().cpu()
        batched = meta.batched
        return RestorationResult(
            image=imageio.from_tensor(hq, meta),
            lq=imageio.from_tensor(imageio.crop_padding(lq, pad), meta),
            prompts=prompts if batched else [p[0] for p in prompts],
            lq_passes=[imageio.crop_padding(p.cpu(), pad) for p in lq_passes],
            timings=clock.times,
            lfo_passes=passes,
            lfo_stop=stop,
            hq_rounds=None if rounds is None else [imageio.crop_padding(r.float().cpu(), pad) for r in rounds],
            decision=None if decisions is None else (decisions if batched else decisions[0]),
        )

    def restore_folder(self, inputs: Any, output_dir: str | os.PathLike, **options: Any) -> Any:
        """Restore image files (a folder, glob, file or a list of them) into ``output_dir/<stem>.png`` with a
        manifest, on every process of an ``accelerate launch`` at once, batched, resumable; see
        :func:`elqproj.archive.restore_files` for the options (``seed``, ``batch_size``, ``resume``, …, and
        this call's own: ``lfo``, ``prompt``, ``upscale``, …).

        Returns:
            :class:`~elqproj.archive.ArchiveReport` (``.done``, ``.failed``, ``.records``).
        """
        from .archive import restore_folder

        return restore_folder(self, inputs, output_dir, **options)

    def _project(self, elq: torch.Tensor, latent: torch.Tensor, texts: Sequence[str], *, preview: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """One f pass from the cached ELQ latent -> (LQ proxy (B,3,H,W) in [0,1], float32, on f's device;
        its scaled latent x0). ``preview``: decoded by :attr:`preview_decoder` instead of the VAE decoder."""
        embeds = self.projector.encode_prompt(list(texts))
        out = self.projector(elq, embeds, latent=latent, tiling=self.tiling, decode=not preview)
        image = self.preview_decoder(out.x0).to(out.x0.device) if preview else out.image
        return signed_to_unit(image.float()), out.x0

    def check_restorer_options(self, options: dict[str, Any] | None) -> None:
        """Refuse ``restorer_options`` before any work: the pipeline's own settings (prompt, seed, tiling, …)
        and names g does not take; ``color_fix`` must be a known colour fix.

        Raises:
            InvalidInputError: naming the offending options and where they belong.
        """
        options = dict(options or {})
        own = sorted(set(options) & {"prompt", "prompts", "image_features", "seed", "tiling", "progress", "upscale",
                                     "process_size"})
        if own:
            raise InvalidInputError(
                f"restorer_options {own} are the pipeline's own settings: pass them to the pipeline call "
                "(prompt=, seed=, progress=, upscale=, process_size=) or configure_tiling()."
            )
        if "color_fix" in options:
            check_color_fix(options.pop("color_fix"))
        self.restorer.check_options(options)

    def _restore(self, lq: torch.Tensor, prompt: PromptResult, *, seed: int | None, progress: bool,
                 options: dict[str, Any]) -> torch.Tensor:
        """g on the LQ proxy ``lq`` (B,3,H,W) in [0,1] (H, W multiples of 8): padded to g's size multiple and minimum side,
        in g's value range, device and dtype, through its tensor core; then cropped and colour-fixed
        towards ``lq`` (``options["color_fix"]``, default g's official one). Returns (B,3,H,W) in [0,1]."""
        caps = self.restorer.capabilities
        color_fix = options.pop("color_fix", caps.color_fix)
        padded, pad = imageio.pad_to_multiple(lq, caps.size_multiple, mode=caps.pad_mode, min_side=caps.min_side)
        x = padded if caps.value_range == "unit" else unit_to_signed(padded)
        # No prompt at all (no extractor, no text): g's own default (S3Diff's official positive prompt,
        # SeeSR's own tagger) rather than the empty string forced on it.
        texts = prompt.texts if any(prompt.texts) else None
        features = prompt.image_features if caps.uses_image_features else None
        out = self.restorer.restore_batch(x.to(self.restorer.device, self.restorer.dtype), prompts=texts,
                                          image_features=features, seed=seed, tiling=self.tiling,
                                          progress=progress, **options)
        out = imageio.crop_padding(out.float(), pad)
        hq = out if caps.value_range == "unit" else signed_to_unit(out)
        return apply_color_fix(hq.clamp(0, 1), lq.to(hq.device), color_fix)


def _fixed_texts(prompt: str | Sequence[str], batch: int) -> list[str]:
    """``prompt`` as one text per image: a string serves every image, a sequence must have ``batch``."""
    if isinstance(prompt, str):
        return [prompt] * batch
    texts = list(prompt) if isinstance(prompt, Sequence) else None
    if texts is None or len(texts) != batch or not all(isinstance(t, str) for t in texts):
        raise InvalidInputError(
            f"prompt must be a text or a list of {batch} texts (one per image), got {prompt!r}; an extractor "
            "name belongs in RestorationPipeline.from_components(prompt_extractor=...)."
        )
    return texts


def _enlarged_size(height: int, width: int, *, upscale: int, process_size: int) -> tuple[int, int]:
    """Enlargement by ``upscale``, then (if needed) so that the short side is ``process_size``."""
    factor = float(upscale)
    if process_size and min(height, width) * factor < process_size:
        factor = process_size / min(height, width)
    return round(height * factor), round(width * factor)


def processing_size(height: int, width: int, *, upscale: int = 1, process_size: int = 512) -> tuple[int, int]:
    """(H, W) in pixels at which f and g run for a ``height``×``width`` input: enlarged as
    :meth:`RestorationPipeline.__call__` does, then padded up to multiples of 8."""
    h, w = _enlarged_size(height, width, upscale=upscale, process_size=process_size)
    return -(-h // 8) * 8, -(-w // 8) * 8


def _enlarge(x: torch.Tensor, *, upscale: int, process_size: int) -> torch.Tensor:
    """Bicubic enlargement of (B, 3, H, W) in [0, 1] to :func:`_enlarged_size`."""
    size = _enlarged_size(*x.shape[-2:], upscale=upscale, process_size=process_size)
    if size == tuple(x.shape[-2:]):
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


def _check_lfo(value: Any, *, allow_auto: bool) -> None:
    if allow_auto and value == "auto":
        return
    if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= LFO_MAX):
        also = " or 'auto'" if allow_auto else ""
        raise InvalidInputError(f"lfo must be an integer from 0 to {LFO_MAX}{also}, got {value!r} (the paper "
                                "recommends 2; more passes oscillate).")


def _check_strength(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise InvalidInputError(f"strength must be a number from 0 (g gets the input) to 1 (the trained projector), "
                                f"got {value!r}.")
    return float(value)


def _per_image(value: Any, batch: int, name: str, check: Callable[[Any], Any]) -> list[Any]:
    """One value for every image of the batch: a scalar repeated, or a list of exactly ``batch`` values."""
    if isinstance(value, (list, tuple)):
        if len(value) != batch:
            raise InvalidInputError(f"{name} has {len(value)} values for {batch} image(s): give one per image.")
        return [check(item) for item in value]
    return [check(value)] * batch


def _strength_blend(strengths: Sequence[float], x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """proxy -> (1 - s)·x + s·proxy per image (x: the sized input in [0, 1] on the proxy's device). The two
    endpoints are exact: s = 0 gives x, s = 1 gives the proxy (pixel interpolation, as AdaptBIR mixes)."""
    if all(value == 1.0 for value in strengths):
        return lambda proxy: proxy
    weight = torch.tensor(strengths, dtype=torch.float32, device=x.device).view(-1, 1, 1, 1)
    return lambda proxy: (1 - weight) * x.float() + weight * proxy


def _heavy_modules(component: Any, owner: str) -> list[tuple[str, torch.nn.Module]]:
    """The UNets, VAEs and ControlNets a component runs (directly or through its one-step engine)."""
    if component is None:
        return []
    found = []
    for holder, prefix in ((component, owner), (getattr(component, "engine", None), f"{owner}.engine")):
        for attribute in ("unet", "vae", "controlnet"):
            module = getattr(holder, attribute, None) if holder is not None else None
            if isinstance(module, torch.nn.Module):
                found.append((f"{prefix}.{attribute}", module))
    return found
