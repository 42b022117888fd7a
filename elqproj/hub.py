"""Resolving and reading weights: Hub ids, revisions, local paths, https URLs, official formats.

Every model component of elqproj is located through this module, so a user can always pass any of

* a local directory (``"./my-projector"``) or file (``"./osediff.pkl"``),
* a Hugging Face Hub repository id (``"stabilityai/stable-diffusion-2-1-base"``) with an optional
  ``revision`` (branch, tag or commit) and, for single files, a ``filename`` inside the repository —
  or the short form ``"org/name/path/in/repo.pkl"``,
* an ``https://`` URL (some official weights live only in GitHub repositories), cached under
  ``$ELQPROJ_CACHE`` (default ``~/.cache/elqproj``) and optionally checked against a sha256.

Downloads go through huggingface_hub, so its cache, ``HF_HOME``, ``HF_HUB_CACHE`` and
``HF_HUB_OFFLINE=1`` behave as everywhere else in the ecosystem. When nothing can be found, a
:class:`~elqproj.errors.WeightsNotFoundError` names what was looked for and how to fix it.

Checkpoints are read without executing code: safetensors directly, pickles (``.pkl``, ``.pth``,
``.bin``, ``.ckpt``) through ``torch.load(weights_only=True)``, whose restricted unpickler refuses any
global outside torch's tensor-rebuilding allow-list.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointMismatchError, ConfigError, UnsafeCheckpointError, WeightsNotFoundError

__all__ = [
    "cache_dir",
    "url_cache_path",
    "is_offline",
    "resolve_dir",
    "resolve_file",
    "load_checkpoint",
    "split_prefixed",
    "nested_entry",
    "WeightsSpec",
]

#: What callers may pass wherever weights are expected.
WeightsSpec = str | os.PathLike

_PICKLE_SUFFIXES = (".pkl", ".pth", ".pt", ".bin", ".ckpt")


def cache_dir() -> Path:
    """Directory for files elqproj downloads itself (URLs), beside huggingface_hub's own cache:
    ``$ELQPROJ_CACHE``, else ``$HF_HOME/elqproj``, else ``$XDG_CACHE_HOME/elqproj``, else ``~/.cache/elqproj``."""
    if os.environ.get("ELQPROJ_CACHE"):
        return Path(os.environ["ELQPROJ_CACHE"]).expanduser()
    for variable in ("HF_HOME", "XDG_CACHE_HOME"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser() / "elqproj"
    return Path.home() / ".cache" / "elqproj"


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``ELQPROJ_OFFLINE``) is set to a truthy value.

    Read at call time (huggingface_hub reads it once at import), so tests and apps may set it late.
    """
    for var in ("HF_HUB_OFFLINE", "ELQPROJ_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    return False


def _looks_like_repo_id(spec: str) -> bool:
    parts = spec.split("/")
    return (
        len(parts) >= 2
        and all(parts)
        and not spec.startswith((".", "/", "~"))
        and "\\" not in spec
        and ":" not in spec
    )


def _split_repo_and_path(spec: str) -> tuple[str, str | None]:
    """``"org/name/sub/file.pkl"`` -> (``"org/name"``, ``"sub/file.pkl"``); ``"org/name"`` -> (it, None)."""
    parts = spec.split("/")
    repo_id = "/".join(parts[:2])
    rest = "/".join(parts[2:]) or None
    return repo_id, rest


def _not_found(what: str, cause: BaseException | None, *, hint: str | None = None) -> WeightsNotFoundError:
    fix = hint or (
        "Check the spelling, pass a local path instead, or download it while online "
        "(e.g. `huggingface-cli download <repo>`) so that it is in the Hugging Face cache."
    )
    offline = " HF_HUB_OFFLINE is set, so nothing was downloaded." if is_offline() else ""
    detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return WeightsNotFoundError(f"Could not find {what}.{offline}{detail} {fix}")


def hub_timeout() -> float:
    """Seconds a Hub request may wait for the server (to connect, or between two received chunks):
    ``$ELQPROJ_HUB_TIMEOUT``, default 20 (huggingface_hub retries a few times on top)."""
    value = os.environ.get("ELQPROJ_HUB_TIMEOUT", "20")
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"ELQPROJ_HUB_TIMEOUT={value!r} is not a number of seconds") from None
    if seconds <= 0:
        raise ConfigError(f"ELQPROJ_HUB_TIMEOUT must be positive, got {value!r}")
    return seconds


def _bound_hub_requests() -> None:
    """Bound every request of huggingface_hub's shared HTTP client by :func:`hub_timeout` where it has no
    timeout of its own. huggingface_hub sends repository lookups with ``timeout=None`` (wait forever):
    behind a proxy or firewall that swallows packets, ``snapshot_download`` hung the process. A request
    hook fills in the missing limits; limits set by huggingface_hub or the application stay as they are."""
    from huggingface_hub import get_session

    hooks = get_session().event_hooks["request"]
    if _fill_in_timeout not in hooks:
        hooks.append(_fill_in_timeout)


def _fill_in_timeout(request: Any) -> None:
    limits = dict(request.extensions.get("timeout") or {})
    seconds = hub_timeout()
    for kind in ("connect", "read", "write", "pool"):
        if limits.get(kind) is None:
            limits[kind] = seconds
    request.extensions["timeout"] = limits


def resolve_dir(
    spec: WeightsSpec,
    *,
    revision: str | None = None,
    allow_patterns: Sequence[str] | None = None,
    required: Sequence[str] = (),
) -> Path:
    """Return a local directory holding the model tree named by ``spec``.

    Args:
        spec: local directory, or Hub repository id (``"org/name"``; ``"org/name/sub/dir"`` selects a
            subfolder).
        revision: Hub branch, tag or commit; ignored for local directories.
        allow_patterns: only download files matching these globs (Hub only).
        required: relative paths that must exist in the result (e.g. ``"unet/config.json"``); a
            missing one raises :class:`WeightsNotFoundError` naming it.
    """
    path = Path(os.fspath(spec)).expanduser()
    if path.is_dir():
        local = path
    elif path.exists():
        raise WeightsNotFoundError(f"{spec!s} is a file, but a model directory was expected.")
    elif isinstance(spec, str) and _looks_like_repo_id(spec):
        repo_id, sub = _split_repo_and_path(spec)
        patterns = list(allow_patterns) if allow_patterns else None
        if sub and patterns:
            patterns = [f"{sub}/{p}" for p in patterns]
        elif sub:
            patterns = [f"{sub}/*"]
        from huggingface_hub import snapshot_download

        try:
            if not is_offline():
                _bound_hub_requests()
            snap = snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=patterns,
                local_files_only=is_offline(),
            )
        except Exception as exc:  # huggingface_hub raises many types; all mean "not available"
            raise _not_found(
                f"Hub repository {repo_id!r}" + (f" at revision {revision!r}" if revision else ""), exc
            ) from exc
        local = Path(snap) / sub if sub else Path(snap)
    else:
        raise _not_found(
            f"a directory or Hub repository named {spec!s}",
            None,
            hint="Pass an existing local directory or a Hub id of the form 'org/name'.",
        )
    missing = [r for r in required if not (local / r).exists()]
    if missing:
        raise WeightsNotFoundError(
            f"{spec!s} resolved to {local}, but it lacks {', '.join(missing)}. "
            "Is this the right model (and revision)?"
        )
    return local


def resolve_file(
    spec: WeightsSpec,
    filename: str | None = None,
    *,
    revision: str | None = None,
    sha256: str | None = None,
) -> Path:
    """Return a local path to one weights file.

    Args:
        spec: local file; local directory (then ``filename`` is required); Hub id ``"org/name"``
            (then ``filename`` is required) or ``"org/name/path/in/repo"``; or an ``https://`` URL.
        filename: file inside a directory or Hub repository.
        revision: Hub branch, tag or commit.
        sha256: expected hex digest; checked for URL downloads (once, when first cached) and local files.

    Raises:
        WeightsNotFoundError: nothing found (offline and not cached, wrong name, …) or checksum mismatch.
    """
    text = os.fspath(spec)
    if text.startswith(("https://", "http://")):
        return _download_url(text, sha256=sha256)
    path = Path(text).expanduser()
    if path.is_file():
        local = path
    elif path.is_dir():
        if filename is None:
            raise WeightsNotFoundError(f"{text} is a directory; pass filename= to pick a file in it.")
        local = path / filename
        if not local.is_file():
            raise _not_found(f"{filename!r} in {text}", None, hint="List the directory and pass the right filename.")
    elif isinstance(spec, str) and _looks_like_repo_id(text):
        repo_id, sub = _split_repo_and_path(text)
        target = "/".join(p for p in (sub, filename) if p)
        if not target:
            raise WeightsNotFoundError(
                f"{text!r} names a Hub repository but no file in it: pass filename= "
                "or use the form 'org/name/path/to/file'."
            )
        from huggingface_hub import hf_hub_download

        if not is_offline():
            _bound_hub_requests()

        try:
            local = Path(
                hf_hub_download(repo_id, target, revision=revision, local_files_only=is_offline())
            )
        except Exception as exc:
            raise _not_found(
                f"file {target!r} in Hub repository {repo_id!r}"
                + (f" at revision {revision!r}" if revision else ""),
                exc,
            ) from exc
    else:
        raise _not_found(
            f"weights file {text!r}",
            None,
            hint="Pass an existing file, a Hub id 'org/name' with filename=, or an https URL.",
        )
    if sha256 is not None:
        _check_sha256(local, sha256)
    return local


def _check_sha256(path: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected.lower():
        raise WeightsNotFoundError(
            f"{path} has sha256 {digest.hexdigest()}, expected {expected}. The file is corrupt or not "
            "the expected release: delete it and download again."
        )


def url_cache_path(url: str) -> Path:
    """Where the file downloaded from ``url`` is kept in :func:`cache_dir` (whether or not it is there yet):
    a machine without internet can be given a file by copying it to this path."""
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    name = url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or "download"
    return cache_dir() / "urls" / key / name


def _download_url(url: str, *, sha256: str | None) -> Path:
    target = url_cache_path(url)
    if target.is_file():
        if sha256 is not None:
            _check_sha256(target, sha256)
        return target
    if is_offline():
        raise _not_found(f"{url} in the elqproj cache ({target})", None,
                         hint="Unset HF_HUB_OFFLINE to download it, or pass a local path.")
    target.parent.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    # Write to a temporary file in the same folder and rename: no partial file is left on failure.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, leave=False) as bar:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
        if sha256 is not None:
            _check_sha256(Path(tmp), sha256)
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError) as exc:
        raise _not_found(url, exc, hint="Check the URL and your connection, or download it by hand.") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load_checkpoint(path: WeightsSpec, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file into a dict without executing code.

    * ``.safetensors``: tensors by key; non-tensor entries stored as JSON strings in the metadata
      (the form elqproj and the golden sets use for official dicts) are decoded and merged. Dotted keys
      ``"a.b"`` whose prefix ``a`` is a metadata-declared group are *not* nested: callers see flat keys.
    * pickles (``.pkl``, ``.pth``, ``.pt``, ``.bin``, ``.ckpt``): ``torch.load(weights_only=True)``.

    Raises:
        UnsafeCheckpointError: the pickle references globals outside torch's safe allow-list
            (arbitrary code execution attempt, or a checkpoint that pickled whole Python objects).
        CheckpointMismatchError: the file is unreadable or not a checkpoint.
    """
    path = Path(os.fspath(path))
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            tensors: dict[str, Any] = dict(load_file(str(path), device=str(map_location)))
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointMismatchError(f"{path} is not a readable safetensors file: {exc}") from exc
        for key, value in meta.items():
            if key == "format":
                continue
            try:
                tensors[key] = json.loads(value)
            except json.JSONDecodeError:
                tensors[key] = value
        return tensors
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise CheckpointMismatchError(f"{path} cannot be read: {exc}") from exc
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch's zip format, or a bare pickle
        raise CheckpointMismatchError(
            f"{path} is not a PyTorch checkpoint or safetensors file (it starts with {head!r}); pass the weights "
            "file itself (.pth, .pkl, .pt, .bin, .ckpt or .safetensors)."
        )
    try:
        try:  # memory-map zip-format checkpoints: a 5 GB RAM file is then not read into memory at once
            obj = torch.load(str(path), map_location=map_location, weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(str(path), map_location=map_location, weights_only=True)  # legacy format
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"Refused to load {path}: it is a pickle that references code or objects outside the safe "
            f"set of tensors and plain containers ({str(exc).splitlines()[0]}). Only load checkpoints "
            "from sources you trust; prefer .safetensors files."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointMismatchError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    if not isinstance(obj, dict):
        raise CheckpointMismatchError(
            f"{path} holds a {type(obj).__name__}, but a dict of tensors was expected."
        )
    return obj


def split_prefixed(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Entries of a flat dict whose keys start with ``prefix + "."``, with the prefix removed.

    Used to read dict-of-dicts checkpoints (``state_dict_unet`` …) that were flattened into safetensors.
    """
    head = prefix + "."
    return {k[len(head):]: v for k, v in state.items() if k.startswith(head)}


def nested_entry(state: dict[str, Any], key: str) -> Any:
    """``state[key]`` for pickled dicts, or the flattened ``key.*`` entries for safetensors copies."""
    if key in state:
        return state[key]
    flat = split_prefixed(state, key)
    if not flat:
        raise CheckpointMismatchError(f"The checkpoint has no entry {key!r} (keys: {sorted(state)[:8]}…).")
    return flat
