"""The paper's image-quality metrics, computed by pyiqa with pinned settings.

The tables follow the OSEDiff/SeeSR evaluation: every number comes from a pyiqa metric, created with the
options pinned in :data:`METRICS`, and each :class:`MetricSpec` states its setting in one line (printed by
``elqproj evaluate`` and written in ``summary.json``), so that a number can be reproduced elsewhere.

pyiqa's networks are created through one guard, :func:`_guarded_loading`, because of two habits of pyiqa:

* it unpickles weight files with ``torch.load(..., weights_only=False)``, so a file replaced in the cache
  could run code when a metric is created: the guard sets ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``, which torch
  reads at every ``torch.load`` and which overrides an explicit ``weights_only=False``;
* it downloads missing files itself (plain ``torch.hub`` downloads, with no offline switch nor resuming):
  the guard replaces its download functions, so that offline (:func:`elqproj.hub.is_offline`) a missing file
  is a :class:`~elqproj.errors.WeightsNotFoundError` naming the file, its URL and where it is expected, and
  online the file comes through :func:`elqproj.downloads.download_url` (progress, resume, atomic rename).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import pickle
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import torch

from ..devices import resolve_device_dtype
from ..downloads import download_url, file_sha256, verify_recorded
from ..errors import (
    CheckpointMismatchError,
    ConfigError,
    ElqprojError,
    IntegrityError,
    InvalidInputError,
    NumericalError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
)
from ..hub import is_offline

__all__ = ["MetricSpec", "METRICS", "PAPER_METRICS", "metric_specs", "MetricSuite"]

logger = logging.getLogger(__name__)

Channel = Literal["y", "rgb"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric of the tables: our name, the pyiqa metric and options behind it, and how to read it."""

    name: str
    pyiqa_name: str
    kind: str  # "full-reference" | "no-reference" | "set" (computed over two folders)
    lower_better: bool
    label: str  # the column header, with the better direction: "PSNR↑", "LPIPS↓"
    settings: str  # one line pinning what is computed
    options: Mapping[str, Any]  # keyword arguments of pyiqa.create_metric


def _spec(name: str, kind: str, lower_better: bool, label: str, settings: str, **options: Any) -> MetricSpec:
    return MetricSpec(name, name, kind, lower_better, label, settings, MappingProxyType(options))


_BT601_Y = "Y of YCbCr (ITU-R BT.601: Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255, RGB in [0, 1])"
_SSIM_WINDOW = "11×11 Gaussian window (σ 1.5), 'valid' borders, no downsampling, K1 0.01, K2 0.03, in float64"

METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        _spec("psnr", "full-reference", False, "PSNR↑",
              f"pyiqa psnr on the {_BT601_Y}, not rounded; data range 1; 10·log10(1 / (MSE + 1e-8)) dB "
              "(identical images: 80 dB); no border crop",
              test_y_channel=True, color_space="ycbcr"),
        _spec("ssim", "full-reference", False, "SSIM↑",
              f"pyiqa ssim on the {_BT601_Y}, scaled to [0, 255] and rounded to integers as MATLAB does; "
              f"{_SSIM_WINDOW}; no border crop",
              test_y_channel=True, color_space="ycbcr", downsample=False),
        _spec("lpips", "full-reference", True, "LPIPS↓",
              "pyiqa lpips: LPIPS v0.1, AlexNet backbone (torchvision IMAGENET1K_V1) with the learned linear "
              "layers (LPIPS_v0.1_alex-df73285e.pth); [0, 1] inputs rescaled to [-1, 1]; spatial mean",
              net="alex", version="0.1"),
        _spec("dists", "full-reference", True, "DISTS↓",
              "pyiqa dists: DISTS with its VGG16 backbone (torchvision IMAGENET1K_V1) and the official α/β "
              "weights (DISTS_weights-f5e65c96.pth); ImageNet-normalised RGB at native resolution"),
        _spec("fid", "set", True, "FID↓",
              "pyiqa fid between the restored and the reference folders: clean-fid 'clean' mode (PIL bicubic "
              "resize to 299×299), Inception-v3 pool3 features (2048-d) with the TF FID weights "
              "(pt_inception-2015-12-05-6726825d.pth), Fréchet distance of the two Gaussian fits",
              dims=2048, backbone="inceptionv3"),
        _spec("niqe", "no-reference", True, "NIQE↓",
              "pyiqa niqe: original NIQE model (niqe_modelparameters.mat) on the luma of YIQ "
              "(0.299 R + 0.587 G + 0.114 B) scaled to [0, 255] and rounded; 96×96 blocks at 2 scales; "
              "no border crop; images need at least 96×96 pixels",
              test_y_channel=True, color_space="yiq", version="original"),
        _spec("musiq", "no-reference", False, "MUSIQ↑",
              "pyiqa musiq: MUSIQ with the KonIQ-10k weights (musiq_koniq_ckpt-e95806b9.pth); multi-scale "
              "input: native resolution plus aspect-preserving resizes to longer side 224 and 384, 32×32 "
              "patches; KonIQ MOS scale (about 0-100)",
              pretrained="koniq10k"),
        _spec("clipiqa", "no-reference", False, "CLIPIQA↑",
              "pyiqa clipiqa: CLIP-IQA with OpenAI's CLIP RN50 (RN50.pt), 5 antonym prompt pairs (good/bad "
              "image, sharp/blurry image, sharp/blurry edges, high/low resolution image, noise-free/noisy "
              "image) averaged; native resolution, no positional embedding; score in [0, 1]",
              model_type="clipiqa", backbone="RN50", pos_embedding=False),
    )
}
PAPER_METRICS: tuple[str, ...] = tuple(METRICS)

_RGB_SPECS: dict[str, MetricSpec] = {
    "psnr": _spec("psnr", "full-reference", False, "PSNR↑",
                  "pyiqa psnr on R, G and B (one MSE over the three channels), not rounded; data range 1; "
                  "10·log10(1 / (MSE + 1e-8)) dB (identical images: 80 dB); no border crop",
                  test_y_channel=False),
    "ssim": _spec("ssim", "full-reference", False, "SSIM↑",
                  "pyiqa ssim on R, G and B, each scaled to [0, 255] and rounded to integers, averaged over "
                  f"the three channels; {_SSIM_WINDOW}; no border crop",
                  test_y_channel=False, downsample=False),
}

#: Smallest image side a metric is defined for (SSIM's window; NIQE's blocks).
_MIN_SIDE = {"ssim": 11, "niqe": 96}
_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"  # torch refuses to load when both are set


def metric_specs(names: Sequence[str], *, channel: Channel = "y") -> list[MetricSpec]:
    """The specs of ``names``, in the order given. ``channel`` computes PSNR and SSIM on the Y channel of
    YCbCr (``"y"``, the paper's setting) or on R, G and B (``"rgb"``); their ``settings`` say which.

    Raises:
        ConfigError: an unknown or repeated name, no name at all, or an unknown channel.
    """
    if channel not in ("y", "rgb"):
        raise ConfigError(f"channel must be 'y' or 'rgb', got {channel!r}.")
    if isinstance(names, str) or not names:
        raise ConfigError(f"Pass a list of metric names (known: {', '.join(METRICS)}), got {names!r}.")
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ConfigError(f"Unknown metric(s) {', '.join(map(repr, unknown))}; known: {', '.join(METRICS)}.")
    repeated = sorted({name for name in names if list(names).count(name) > 1})
    if repeated:
        raise ConfigError(f"Metric(s) listed more than once: {', '.join(repeated)}.")
    variants = _RGB_SPECS if channel == "rgb" else {}
    return [variants.get(name, METRICS[name]) for name in names]


class MetricSuite:
    """The pyiqa metrics of ``names``, created at once (a missing or unsafe weight file fails here, before
    any image is restored), then applied image by image (:meth:`score`) and folder by folder
    (:meth:`score_sets`). Create suites from one thread at a time: creation swaps pyiqa's download
    functions process-wide while it runs.

    Args:
        names: metric names, from :data:`PAPER_METRICS`.
        device: where the networks run; ``None``: CUDA if available, else the CPU.
        channel: PSNR and SSIM on the Y channel (``"y"``) or on RGB (``"rgb"``).
        options: extra pyiqa options per metric name, over the pinned ones (tests build tiny networks so).

    Raises:
        ConfigError: unknown names or options; pyiqa (or, for clipiqa, OpenAI's ``clip``) not installed.
        WeightsNotFoundError: a weight file is missing while offline, or its download failed.
        UnsafeCheckpointError: a weight file is a pickle that would run code (nothing of it runs).
        CheckpointMismatchError: a weight file is unreadable or does not fit the network.
        IntegrityError: a downloaded file does not match its published checksum.
    """

    def __init__(
        self,
        names: Sequence[str],
        *,
        device: str | torch.device | None = None,
        channel: Channel = "y",
        options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.specs: list[MetricSpec] = metric_specs(names, channel=channel)
        extra = dict(options or {})
        stray = sorted(set(extra) - {spec.name for spec in self.specs})
        if stray:
            raise ConfigError(f"options given for metric(s) not in the suite: {', '.join(stray)}.")
        self.device: torch.device = resolve_device_dtype(device, None)[0]
        self._metrics: dict[str, Any] | None = {
            spec.name: _create(spec, extra.get(spec.name, {}), self.device) for spec in self.specs
        }

    def settings(self) -> dict[str, str]:
        """Metric name -> the line pinning its setting, in the suite's order."""
        return {spec.name: spec.settings for spec in self.specs}

    def score(self, restored: torch.Tensor, reference: torch.Tensor | None = None) -> dict[str, float]:
        """Every full-reference and no-reference metric of the suite on one image (``"set"`` metrics are
        left to :meth:`score_sets`); full-reference ones are left out when ``reference`` is None.

        Args:
            restored: float ``(1, 3, H, W)`` RGB in ``[0, 1]``, on any device.
            reference: the ground truth, same shape and range, or None.

        Returns:
            Metric name -> value, in the suite's order: PSNR in dB, the others in their own units (see
            each spec's ``settings``).

        Raises:
            InvalidInputError: wrong type, shape, dtype or range, NaN/inf, different sizes, or an image
                smaller than a metric allows (SSIM 11, NIQE 96 pixels a side).
            NumericalError: a metric is undefined on this image (NIQE of a flat image).
        """
        metrics = self._open_metrics()
        restored = self._checked(restored, "restored")
        if reference is not None:
            reference = self._checked(reference, "reference")
            if reference.shape != restored.shape:
                raise InvalidInputError(
                    f"restored and reference differ in size: {tuple(restored.shape[-2:])} vs "
                    f"{tuple(reference.shape[-2:])} (H, W); full-reference metrics compare images of one size."
                )
        results = {}
        side = min(restored.shape[-2:])
        for spec in self.specs:
            if spec.kind == "set" or (spec.kind == "full-reference" and reference is None):
                continue
            if side < _MIN_SIDE.get(spec.name, 1):
                raise InvalidInputError(
                    f"{spec.name} needs images of at least {_MIN_SIDE[spec.name]} pixels a side, got "
                    f"{tuple(restored.shape[-2:])} (H, W)."
                )
            inputs = (restored,) if spec.kind == "no-reference" else (restored, reference)
            try:
                value = metrics[spec.name](*inputs)
            except torch.linalg.LinAlgError as exc:
                raise NumericalError(f"{spec.name} is undefined on this image ({exc}); NIQE, for one, is "
                                     "undefined on flat images.") from exc
            results[spec.name] = float(value.item())
        return results

    def score_sets(self, restored_dir: Path, reference_dir: Path) -> dict[str, float]:
        """The ``"set"`` metrics (FID, unitless) between two folders of image files (PNG, JPEG…, searched
        recursively; names need not match); ``{}`` if the suite has none.

        Raises:
            InvalidInputError: a folder is missing or holds fewer than 2 images (no covariance to fit).
        """
        metrics = self._open_metrics()
        sets = [spec for spec in self.specs if spec.kind == "set"]
        if not sets:
            return {}
        from pyiqa.utils.img_util import scandir_images

        for folder in (restored_dir, reference_dir):
            if not Path(folder).is_dir():
                raise InvalidInputError(f"{folder} is not a folder of images.")
            if len(scandir_images(str(folder))) < 2:
                raise InvalidInputError(f"{folder} holds fewer than 2 images: FID needs 2 or more per folder.")
        return {
            spec.name: float(metrics[spec.name](str(restored_dir), str(reference_dir), mode="clean",
                                                distance_type="frechet", num_workers=0, verbose=False))
            for spec in sets
        }

    def close(self) -> None:
        """Drop the suite's networks (freeing their memory unless referenced elsewhere); it cannot score again."""
        self._metrics = None

    def __enter__(self) -> MetricSuite:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _open_metrics(self) -> dict[str, Any]:
        if self._metrics is None:
            raise ConfigError("This MetricSuite was closed; create a new one to score again.")
        return self._metrics

    def _checked(self, image: object, what: str) -> torch.Tensor:
        if not isinstance(image, torch.Tensor):
            raise InvalidInputError(f"{what} must be a torch.Tensor, got {type(image).__name__}.")
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
            raise InvalidInputError(f"{what} must have shape (1, 3, H, W), got {tuple(image.shape)}.")
        if not image.is_floating_point():
            raise InvalidInputError(f"{what} must be a float tensor in [0, 1], got dtype {image.dtype}.")
        if not torch.isfinite(image).all():
            raise InvalidInputError(f"{what} contains NaN or infinite values.")
        low, high = image.min().item(), image.max().item()
        if low < 0 or high > 1:
            raise InvalidInputError(
                f"{what} must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]; clamp it, or convert "
                "[-1, 1] images with elqproj.value_range.signed_to_unit."
            )
        return image.to(self.device, torch.float32)


def _create(spec: MetricSpec, extra: Mapping[str, Any], device: torch.device) -> Any:
    """``pyiqa.create_metric`` for ``spec`` under :func:`_guarded_loading`, its errors made typed."""
    try:
        import pyiqa
    except ImportError as exc:
        raise ConfigError(f"The metrics need pyiqa ({exc}): pip install 'elqproj[eval]'.") from exc
    if spec.name == "clipiqa":
        _require_clip()
    options = {**spec.options, **extra}
    printed = io.StringIO()  # pyiqa prints "Loading pretrained model …" lines: kept out of the CLI's output
    try:
        with _guarded_loading(spec.name), contextlib.redirect_stdout(printed), warnings.catch_warnings():
            # pyiqa builds torchvision models with arguments deprecated since torchvision 0.13
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision.models._utils")
            return pyiqa.create_metric(spec.pyiqa_name, device=device, **options)
    except ElqprojError:
        raise
    except pickle.UnpicklingError as exc:
        raise _refused(spec.name, _file_being_loaded(exc), exc) from exc
    except TypeError as exc:
        raise ConfigError(f"pyiqa cannot build {spec.pyiqa_name} with the options {options}: {exc}") from exc
    except (RuntimeError, EOFError) as exc:
        path = _file_being_loaded(exc)
        if path is None and "state_dict" not in str(exc):
            raise
        raise CheckpointMismatchError(
            f"The weights of the {spec.name} metric ({path or 'in the pyiqa cache'}) are unreadable or do not fit "
            f"the network built with the options {options}: {' '.join(str(exc).split())[:400]}. Delete the file "
            "and download it again."
        ) from exc
    finally:
        if printed.getvalue():
            logger.debug("pyiqa %s: %s", spec.name, printed.getvalue().strip())


def _refused(metric: str, path: str | None, exc: pickle.UnpicklingError) -> ElqprojError:
    """The typed error for a weight file torch's restricted unpickler refused: not a checkpoint at all (an
    error page saved under the file's name), or a pickle that would build objects or run code."""
    head = b""
    if path is not None and os.path.isfile(path):
        with open(path, "rb") as fh:
            head = fh.read(4)
    if path is not None and not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # zip or bare pickle
        return CheckpointMismatchError(f"{path}, a weight file of the {metric} metric, is not a PyTorch checkpoint "
                                       f"(it starts with {head!r}). Delete it and download it again.")
    reason = str(exc).split("WeightsUnpickler error:")[-1].strip().split(". ")[0]
    return UnsafeCheckpointError(
        f"Refused to load {path or 'a weight file'} for the {metric} metric: it is a pickle that references code "
        f"or objects outside torch's safe set of tensors and plain containers ({reason}). Nothing in it was run. "
        "Delete it, and download the official file again."
    )


def _require_clip() -> None:
    """pyiqa's clipiqa imports OpenAI's ``clip`` module, which pyiqa lists but cannot always import."""
    try:
        importlib.import_module("clip")
    except ImportError as exc:
        fix = ("openai-clip imports pkg_resources, which setuptools 82 and later no longer ship: "
               "pip install 'setuptools<82'" if exc.name == "pkg_resources" else "pip install openai-clip")
        raise ConfigError(f"The clipiqa metric needs OpenAI's clip module, which cannot be imported ({exc}); "
                          f"{fix}.") from exc


def _file_being_loaded(exc: BaseException) -> str | None:
    """The file ``torch.load`` was reading when ``exc`` was raised: torch's own message does not name it,
    and pyiqa loads several files per metric."""
    import torch.serialization

    found = None
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "load" and code.co_filename == torch.serialization.__file__:
            source = tb.tb_frame.f_locals.get("f")
            found = str(getattr(source, "name", source))
        tb = tb.tb_next
    return found


@contextlib.contextmanager
def _guarded_loading(metric: str) -> Iterator[None]:
    """Create pyiqa networks with pickles restricted to tensors and with downloads routed through
    elqproj (see the module docstring). Process-wide while it lasts: create metrics from one thread."""
    from pyiqa.archs import clip_model
    import pyiqa.utils.download_util as pyiqa_download
    import torch.hub

    def fetch(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        """torch.hub's and pyiqa's ``download_url_to_file``: torchvision backbones and pyiqa weights."""
        _fetch(metric, url, Path(dst), hash_prefix=hash_prefix, progress=progress)

    def fetch_clip(url: str, root: str) -> str:
        """pyiqa's CLIP ``_download``: OpenAI names each file's folder after its sha256."""
        target = Path(root) / os.path.basename(url)
        if target.is_file():
            verify_recorded(target, expected=url.split("/")[-2], fix=f"delete {target} and download it again")
        else:
            _fetch(metric, url, target, sha256=url.split("/")[-2])
        return str(target)

    # pyiqa computed its cache folder at import; the hub folder may have moved since (TORCH_HOME).
    patches = [
        (pyiqa_download, "DEFAULT_CACHE_DIR", os.path.join(torch.hub.get_dir(), "pyiqa")),
        (pyiqa_download, "download_url_to_file", fetch),
        (torch.hub, "download_url_to_file", fetch),
        (clip_model, "_download", fetch_clip),
    ]
    saved_attrs = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    saved_env = {var: os.environ.get(var) for var in (_WEIGHTS_ONLY, _NO_WEIGHTS_ONLY)}
    try:
        os.environ[_WEIGHTS_ONLY] = "1"
        os.environ.pop(_NO_WEIGHTS_ONLY, None)
        for owner, name, value in patches:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved_attrs:
            setattr(owner, name, value)
        for var, value in saved_env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def _fetch(metric: str, url: str, target: Path, *, sha256: str | None = None, hash_prefix: str | None = None,
           progress: bool = True) -> None:
    """Download ``url`` to ``target`` for ``metric``, or explain where to put it when offline."""
    if is_offline():
        raise WeightsNotFoundError(
            f"The {metric} metric needs {target.name}, which is not downloaded yet, and downloads are off "
            f"(HF_HUB_OFFLINE or ELQPROJ_OFFLINE is set). It comes from {url} and is expected at {target}: "
            "put the file there, or run once online."
        )
    download_url(url, target, sha256=sha256, progress=progress)
    # torchvision names its files after the start of their sha256
    if hash_prefix and not (digest := file_sha256(target)).startswith(hash_prefix):
        target.unlink()
        raise IntegrityError(f"{url} sent a file whose sha256 is {digest}, but its name promises one starting "
                             f"with {hash_prefix}: nothing was kept; try again.")
