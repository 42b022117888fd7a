"""The weights table: every component elqproj can download, where it officially comes from, what it is,
its licence and who uses it — and :func:`fetch`, which gets one into the cache.

Sources, by kind:

* ``hub-repo`` / ``hub-file``: the Hugging Face Hub through huggingface_hub (its cache, revisions,
  ``HF_ENDPOINT`` for a Hub mirror, ``HF_HUB_OFFLINE=1``); LFS files are checked against their sha256.
* ``url``: a plain https file (GitHub), through :func:`elqproj.downloads.download_url` (resumable,
  checksum recorded at the first download and verified at every load).
* ``gdrive-file`` / ``gdrive-folder``: Google Drive through gdown (it answers Drive's confirmation page
  for large files), then recorded and verified like a URL download.

``ELQPROJ_MIRROR=https://mirror.example.org`` sends every non-Hub source to
``<mirror>/<component>/<file>`` (``ELQPROJ_MIRROR_<COMPONENT>``, e.g. ``ELQPROJ_MIRROR_DE_NET``, for one
component), for air-gapped sites and corporate proxies; files keep their cache place, so a cache filled
through a mirror serves the official names too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from . import hub
from .downloads import download_url, record_checksum, verify_recorded
from .errors import UnknownNameError, WeightsNotFoundError
from .validation import ConfigModel

__all__ = ["COMPONENTS", "Component", "SD_BASE_FILES", "cached_path", "fetch", "get_component", "mirror_url",
           "source_text",
           "resolve_weights", "sd_base_files", "TRANSFORMERS_MODEL_FILES"]

#: Hub allow-patterns of the files read from a diffusers-layout SD base, per part (the root's
#: ``model_index.json``, then each component folder). Restorers that need only some parts select them
#: with :func:`sd_base_files`.
SD_BASE_FILES: dict[str, tuple[str, ...]] = {
    "model_index": ("model_index.json",),
    "scheduler": ("scheduler/*.json",),
    "tokenizer": ("tokenizer/*",),
    "text_encoder": ("text_encoder/config.json", "text_encoder/model.safetensors"),
    "unet": ("unet/config.json", "unet/diffusion_pytorch_model.safetensors"),
    "vae": ("vae/config.json", "vae/diffusion_pytorch_model.safetensors"),
}


#: Hub allow-patterns of a transformers model folder (configs, safetensors, tokenizer and chat template files).
TRANSFORMERS_MODEL_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


def sd_base_files(*parts: str) -> list[str]:
    """The allow-patterns of the named parts of :data:`SD_BASE_FILES` (every part when none is named)."""
    return [pattern for part in parts or SD_BASE_FILES for pattern in SD_BASE_FILES[part]]


class Component(ConfigModel):
    """One downloadable component.

    Attributes:
        name: the table key (``elqproj download <name>``).
        description: what it is.
        kind: ``hub-repo``, ``hub-file``, ``url``, ``gdrive-file`` or ``gdrive-folder``.
        source: Hub repository id (``org/name``), Hub file (``org/name/path``), URL, or Google Drive id.
        files: the component's files as a mirror serves them (``<mirror>/<name>/<file>``); for a Drive
            folder, paths inside the downloaded folder.
        folder: for a Drive folder, the subfolder that is the component (the official folder holds more).
        revision: Hub revision (default: the repository's main branch).
        allow_patterns: for a Hub repository, the files that are downloaded (not the whole repository).
        sha256: the published checksum of a single-file component, where there is one.
        format: file format, as stored officially.
        size: approximate download size ("unknown" where it could not be checked).
        licence: licence of the weights.
        used_by: the restorers / prompt extractors / parts of elqproj that load it.
        citation: what to cite (in model cards).
    """

    name: str
    description: str
    kind: Literal["hub-repo", "hub-file", "url", "gdrive-file", "gdrive-folder"]
    source: str
    files: list[str]
    folder: str | None = None
    revision: str | None = None
    allow_patterns: list[str] | None = None
    sha256: str | None = None
    format: str
    size: str
    licence: str
    used_by: list[str]
    citation: str = ""


_SD_LICENCE = "CreativeML Open RAIL++-M"
_SEESR_PAPER = "Wu et al., SeeSR: Towards Semantics-Aware Real-World Image Super-Resolution, CVPR 2024 (arXiv:2311.16518)"
_RAM_PAPER = "Zhang et al., Recognize Anything: A Strong Image Tagging Model (arXiv:2306.03514)"
_SD_FILES = sd_base_files()

#: Every component, in the order ``elqproj download --list`` shows them.
COMPONENTS: dict[str, Component] = {c.name: c for c in [
    Component(name="sd21-base", description="Stable Diffusion 2.1-base (the projector f's base; OSEDiff's base)",
              kind="hub-repo", source="stabilityai/stable-diffusion-2-1-base", files=_SD_FILES,
              allow_patterns=_SD_FILES, format="diffusers folders, safetensors", size="5.2 GB", licence=_SD_LICENCE,
              used_by=["projector", "osediff"],
              citation="Rombach et al., High-Resolution Image Synthesis with Latent Diffusion Models, CVPR 2022"),
    Component(name="sd2-base", description="Stable Diffusion 2-base (SeeSR's base)", kind="hub-repo",
              source="stabilityai/stable-diffusion-2-base", files=_SD_FILES, allow_patterns=_SD_FILES,
              format="diffusers folders, safetensors", size="5.2 GB", licence=_SD_LICENCE, used_by=["seesr"],
              citation="Rombach et al., High-Resolution Image Synthesis with Latent Diffusion Models, CVPR 2022"),
    Component(name="sd-turbo", description="SD-Turbo (S3Diff's base)", kind="hub-repo", source="stabilityai/sd-turbo",
              files=_SD_FILES, allow_patterns=_SD_FILES, format="diffusers folders, safetensors", size="5.2 GB",
              licence="Stability AI non-commercial research community licence", used_by=["s3diff"],
              citation="Sauer et al., Adversarial Diffusion Distillation (arXiv:2311.17042)"),
    Component(name="osediff", description="OSEDiff LoRA weights (real-world SR)", kind="url",
              source="https://github.com/cswry/OSEDiff/raw/main/preset/models/osediff.pkl", files=["osediff.pkl"],
              format="pickle (torch.save of a dict)", size="unknown", licence="Apache-2.0", used_by=["osediff"],
              citation="Wu et al., One-Step Effective Diffusion Network for Real-World Image Super-Resolution, "
                       "NeurIPS 2024 (arXiv:2406.08177)"),
    Component(name="s3diff", description="S3Diff LoRA and degradation-guided modulation weights", kind="hub-file",
              source="zhangap/S3Diff/s3diff.pkl", files=["s3diff.pkl"], format="pickle (torch.save of a dict)",
              size="unknown", licence="Apache-2.0", used_by=["s3diff"],
              citation="Zhang et al., Degradation-Guided One-Step Image Super-Resolution with Diffusion Priors "
                       "(arXiv:2409.17058)"),
    Component(name="de-net", description="S3Diff's degradation estimator (from MM-RealSR)", kind="url",
              source="https://github.com/ArcticHare105/S3Diff/raw/6a2e0a47676f2f01fccdfd4e940077d3038d953e/"
                     "assets/mm-realsr/de_net.pth", files=["de_net.pth"], format="pickle (state dict)", size="unknown",
              licence="Apache-2.0", used_by=["s3diff"],
              citation="Zhang et al., Degradation-Guided One-Step Image Super-Resolution with Diffusion Priors "
                       "(arXiv:2409.17058)"),
    Component(name="seesr", description="SeeSR UNet and ControlNet (the 'seesr' folder of the official release)",
              kind="gdrive-folder", source="12HXrRGEXUAnmHRaf0bIn-S8XSK4Ku0JO", folder="seesr",
              files=["unet/config.json", "unet/diffusion_pytorch_model.safetensors", "controlnet/config.json",
                     "controlnet/diffusion_pytorch_model.safetensors"],
              format="diffusers folders, safetensors", size="unknown", licence="Apache-2.0", used_by=["seesr"],
              citation=_SEESR_PAPER),
    Component(name="dape", description="DAPE, SeeSR's degradation-aware RAM (a LoRA on RAM Swin-L)",
              kind="gdrive-file", source="1KIV6VewwO2eDC9g4Gcvgm-a0LDI7Lmwm", files=["DAPE.pth"],
              format="pickle (state dict)", size="7 MB", licence="Apache-2.0", used_by=["dape", "seesr"],
              citation=_SEESR_PAPER),
    Component(name="ram", description="RAM Swin-L (14M images), the image tagger", kind="hub-file",
              source="xinyu1205/recognize_anything_model/ram_swin_large_14m.pth", files=["ram_swin_large_14m.pth"],
              format="pickle (training save)", size="5.6 GB", licence="Apache-2.0", used_by=["ram", "dape", "seesr"],
              citation=_RAM_PAPER),
    Component(name="daclip", description="DA-CLIP ViT-B-32, the degradation-aware CLIP (frozen CLIP + controller)",
              kind="hub-file", source="weblzw/daclip-uir-ViT-B-32-irsde/daclip_ViT-B-32.pt", files=["daclip_ViT-B-32.pt"],
              format="pickle (torch.save of the DaCLIP state dict)", size="unknown", licence="MIT", used_by=["daclip"],
              citation="Luo et al., Controlling Vision-Language Models for Multi-Task Image Restoration, ICLR 2024 "
                       "(arXiv:2310.01018)"),
    Component(name="smolvlm", description="SmolVLM-256M-Instruct, the default vision-language prompt extractor",
              kind="hub-repo", source="HuggingFaceTB/SmolVLM-256M-Instruct",
              files=TRANSFORMERS_MODEL_FILES, allow_patterns=TRANSFORMERS_MODEL_FILES,
              format="transformers folder, safetensors", size="0.5 GB", licence="Apache-2.0", used_by=["vlm"],
              citation="Marafioti et al., SmolVLM: Redefining small and efficient multimodal models (arXiv:2504.05299)"),
    Component(name="taesd", description="TAESD, a tiny decoder for SD latents (the opt-in preview decoder of LFO passes)",
              kind="hub-repo", source="madebyollin/taesd", files=["config.json", "diffusion_pytorch_model.safetensors"],
              allow_patterns=["config.json", "diffusion_pytorch_model.safetensors"],
              format="diffusers AutoencoderTiny folder, safetensors", size="10 MB", licence="MIT",
              used_by=["preview decoder"],
              citation="Bohan, TAESD: Tiny AutoEncoder for Stable Diffusion (github.com/madebyollin/taesd)"),
]}


def get_component(name: str) -> Component:
    """The table entry ``name``.

    Raises:
        UnknownNameError: naming the components there are.
    """
    try:
        return COMPONENTS[name]
    except KeyError:
        raise UnknownNameError(f"No component {name!r}; the components are: {', '.join(COMPONENTS)}.") from None


def source_text(component: Component) -> str:
    """Where a component officially comes from, in words (for messages and model cards)."""
    if component.kind == "gdrive-folder":
        return f"Google Drive, https://drive.google.com/drive/folders/{component.source}"
    if component.kind == "gdrive-file":
        return f"Google Drive, https://drive.google.com/file/d/{component.source}"
    if component.kind.startswith("hub"):
        return f"Hugging Face Hub, {component.source}"
    return component.source


def mirror_url(component: Component, file: str) -> str | None:
    """``<mirror>/<component>/<file>`` when ``ELQPROJ_MIRROR_<COMPONENT>`` or ``ELQPROJ_MIRROR`` is set (Hub
    components are not mirrored here: huggingface_hub's ``HF_ENDPOINT`` does that)."""
    if component.kind.startswith("hub"):
        return None
    variable = "ELQPROJ_MIRROR_" + component.name.upper().replace("-", "_")
    mirror = os.environ.get(variable) or os.environ.get("ELQPROJ_MIRROR")
    return f"{mirror.rstrip('/')}/{component.name}/{file}" if mirror else None


def _target(component: Component) -> Path:
    """Where a non-Hub component lives once downloaded: a URL's cache place, else the Drive folder."""
    if component.kind == "url":
        return hub.url_cache_path(component.source)
    root = hub.cache_dir() / "components" / component.name
    if component.kind == "gdrive-folder":
        return root / (component.folder or "")
    return root / component.files[0]


def _complete(component: Component, target: Path) -> bool:
    if component.kind == "gdrive-folder":
        return all((target / file).is_file() for file in component.files)
    return target.is_file()


def _verify(component: Component, target: Path) -> None:
    fix = f"delete {target} and run `elqproj download {component.name}`"
    if component.kind == "gdrive-folder":
        for file in component.files:
            verify_recorded(target / file, fix=fix)
    else:
        verify_recorded(target, expected=component.sha256, fix=fix)


def cached_path(name: str) -> Path | None:
    """The local copy of component ``name`` if it is in the cache (nothing is downloaded), else None."""
    component = get_component(name)
    if component.kind.startswith("hub"):
        try:
            if component.kind == "hub-repo":
                return hub.resolve_dir(component.source, revision=component.revision,
                                       allow_patterns=component.allow_patterns, local_only=True)
            return hub.resolve_file(component.source, revision=component.revision, local_only=True)
        except WeightsNotFoundError:
            return None
    target = _target(component)
    return target if _complete(component, target) else None


def fetch(name: str, *, progress: bool = True) -> Path:
    """The local copy of component ``name`` (a file, or a folder for ``*-repo`` / ``*-folder`` kinds),
    downloaded first when it is not cached; a cached copy is verified against its checksum.

    Raises:
        UnknownNameError: no such component.
        WeightsNotFoundError: offline (``HF_HUB_OFFLINE=1``) and not cached, or the download failed;
            the message names where the file is expected and the command that fetches it.
        IntegrityError: a cached or downloaded file does not match its checksum.
    """
    component = get_component(name)
    if component.kind == "hub-repo":
        return hub.resolve_dir(component.source, revision=component.revision, allow_patterns=component.allow_patterns)
    if component.kind == "hub-file":
        return hub.resolve_file(component.source, revision=component.revision, sha256=component.sha256)
    target = _target(component)
    if _complete(component, target):
        _verify(component, target)
        return target
    if hub.is_offline():
        raise WeightsNotFoundError(
            f"The {name} weights ({source_text(component)}) are not in the cache ({target}) and HF_HUB_OFFLINE is "
            f"set: run `elqproj download {name}` with a network (or ELQPROJ_MIRROR), copy the file(s) there, or "
            "pass the weights' path."
        )
    if mirror_url(component, component.files[0]) is not None:
        for file in component.files:
            path = target / file if component.kind == "gdrive-folder" else target
            download_url(mirror_url(component, file), path, sha256=component.sha256, progress=progress)
    elif component.kind == "url":
        download_url(component.source, target, sha256=component.sha256, progress=progress)
    elif component.kind == "gdrive-file":
        _gdrive_file(component, target, progress=progress)
    else:
        _gdrive_folder(component, target, progress=progress)
    return target


def resolve_weights(weights: hub.WeightsSpec | None, component: str, *, filename: str | None = None,
                    revision: str | None = None, sha256: str | None = None) -> Path:
    """What a loader reads: ``weights`` resolved by :func:`elqproj.hub.resolve_file` (a file, a folder holding
    ``filename`` or converted by ``elqproj convert``, a Hub id, a URL), or, when it is ``None``, the
    component's default from the table through :func:`fetch`. ``sha256`` is checked either way."""
    if weights is not None:
        return hub.resolve_file(weights, filename, revision=revision, sha256=sha256)
    path = fetch(component)
    if sha256 is not None:
        verify_recorded(path, expected=sha256, fix="pass the weights whose checksum you gave")
    return path


def _gdown() -> Any:
    try:
        import gdown
    except ImportError:
        raise WeightsNotFoundError("Google Drive downloads need gdown: pip install gdown.") from None
    return gdown


def _gdrive_file(component: Component, target: Path, *, progress: bool) -> None:
    """One Drive file through gdown (resumable: its partial file is kept), checked, moved into place."""
    gdown = _gdown()
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.gdown")
    try:
        gdown.download(id=component.source, output=str(part), quiet=not progress, resume=True)
    except Exception as exc:  # noqa: BLE001 - gdown raises requests' and its own errors
        raise WeightsNotFoundError(
            f"Downloading {component.name} from Google Drive (id {component.source}) failed: {exc}. Drive limits "
            f"downloads of popular files: try later, set ELQPROJ_MIRROR, or put the file at {target} yourself."
        ) from exc
    if component.sha256 is not None:
        verify_recorded(part, expected=component.sha256, fix="download it again")
    os.replace(part, target)
    record_checksum(target)


def _gdrive_folder(component: Component, target: Path, *, progress: bool) -> None:
    """A Drive folder through gdown; the component is its ``folder`` subfolder, each file recorded."""
    gdown = _gdown()
    root = target.parent if component.folder else target
    try:
        gdown.download_folder(id=component.source, output=str(root), quiet=not progress, resume=True)
    except Exception as exc:  # noqa: BLE001
        raise WeightsNotFoundError(
            f"Downloading {component.name} from Google Drive (folder {component.source}) failed: {exc}. Try later, "
            f"set ELQPROJ_MIRROR, or put {', '.join(component.files)} under {target} yourself."
        ) from exc
    missing = [file for file in component.files if not (target / file).is_file()]
    if missing:
        raise WeightsNotFoundError(f"The Drive folder {component.source} did not hold {missing} under {target}; "
                                   "the release may have moved: put the files there yourself.")
    for file in component.files:
        record_checksum(target / file)
