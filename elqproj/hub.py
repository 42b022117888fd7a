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
import logging
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .downloads import download_url, verify_recorded
from .errors import CheckpointMismatchError, ConfigError, UnsafeCheckpointError, WeightsNotFoundError

__all__ = [
    "cache_dir",
    "url_cache_path",
    "is_offline",
    "resolve_dir",
    "resolve_file",
    "load_checkpoint",
    "load_state_strictly",
    "save_checkpoint",
    "CONVERTED_INDEX",
    "split_prefixed",
    "nested_entry",
    "WeightsSpec",
]

logger = logging.getLogger(__name__)

#: What callers may pass wherever weights are expected.
WeightsSpec = str | os.PathLike

_PICKLE_SUFFIXES = (".pkl", ".pth", ".pt", ".bin", ".ckpt")
#: The file that marks a folder (or Hub repository) written by ``elqproj convert``: it names the weights
#: file and the official file it was converted from, so that either name finds it.
CONVERTED_INDEX = "elqproj_weights.json"
#: Safetensors metadata key listing the entries that were dicts of tensors (see :func:`save_checkpoint`).
_NESTED = "__elqproj_nested__"


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
    local_only: bool = False,
) -> Path:
    """Return a local directory holding the model tree named by ``spec``.

    Args:
        spec: local directory, or Hub repository id (``"org/name"``; ``"org/name/sub/dir"`` selects a
            subfolder).
        revision: Hub branch, tag or commit; ignored for local directories.
        allow_patterns: only download files matching these globs (Hub only).
        required: relative paths that must exist in the result (e.g. ``"unet/config.json"``); a
            missing one raises :class:`WeightsNotFoundError` naming it.
        local_only: only what is cached, as with ``HF_HUB_OFFLINE=1``.
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

        offline = local_only or is_offline()
        try:
            if not offline:
                _bound_hub_requests()
            snap = snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=patterns,
                local_files_only=offline,
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
    local_only: bool = False,
) -> Path:
    """Return a local path to one weights file.

    Args:
        spec: local file; local directory (then ``filename`` is required); Hub id ``"org/name"``
            (then ``filename`` is required) or ``"org/name/path/in/repo"``; or an ``https://`` URL.
        filename: file inside a directory or Hub repository.
        revision: Hub branch, tag or commit.
        sha256: expected hex digest; checked for URL downloads (once, when first cached) and local files.
        local_only: only what is cached, as with ``HF_HUB_OFFLINE=1``.

    Raises:
        WeightsNotFoundError: nothing found (offline and not cached, wrong name, …) or checksum mismatch.
    """
    text = os.fspath(spec)
    offline = local_only or is_offline()
    if text.startswith(("https://", "http://")):
        return _download_url(text, sha256=sha256, offline=offline)
    path = Path(text).expanduser()
    if path.is_file():
        local = path
    elif path.is_dir():
        filename = _converted_file(path / CONVERTED_INDEX, filename)
        if filename is None:
            raise WeightsNotFoundError(f"{text} is a directory; pass filename= to pick a file in it.")
        local = path / filename
        if not local.is_file():
            raise _not_found(f"{filename!r} in {text}", None, hint="List the directory and pass the right filename.")
    elif isinstance(spec, str) and _looks_like_repo_id(text):
        repo_id, sub = _split_repo_and_path(text)
        from huggingface_hub import hf_hub_download

        if not offline:
            _bound_hub_requests()
        if sub is None:  # a repository written by `elqproj convert` names its weights file
            try:
                index = hf_hub_download(repo_id, CONVERTED_INDEX, revision=revision, local_files_only=offline)
            except Exception:  # noqa: BLE001 - no index: an ordinary repository
                index = None
            if index is not None:
                filename = _converted_file(Path(index), filename)
        target = "/".join(p for p in (sub, filename) if p)
        if not target:
            raise WeightsNotFoundError(
                f"{text!r} names a Hub repository but no file in it: pass filename= "
                "or use the form 'org/name/path/to/file'."
            )
        try:
            local = Path(
                hf_hub_download(repo_id, target, revision=revision, local_files_only=offline)
            )
        except Exception as exc:
            raise _not_found(
                f"file {target!r} in Hub repository {repo_id!r}"
                + (f" at revision {revision!r}" if revision else ""),
                exc,
            ) from exc
        _verify_hub_blob(local)
    else:
        raise _not_found(
            f"weights file {text!r}",
            None,
            hint="Pass an existing file, a Hub id 'org/name' with filename=, or an https URL.",
        )
    if sha256 is not None:
        verify_recorded(local, expected=sha256, fix="replace it with the official release")
    return local


def url_cache_path(url: str) -> Path:
    """Where the file downloaded from ``url`` is kept in :func:`cache_dir` (whether or not it is there yet):
    a machine without internet can be given a file by copying it to this path."""
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    name = url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or "download"
    return cache_dir() / "urls" / key / name


def _converted_file(index: Path, filename: str | None) -> str | None:
    """The weights file an ``elqproj convert`` folder holds, when ``filename`` is unset or names the official
    file it was converted from; else ``filename`` unchanged."""
    if not index.is_file():
        return filename
    try:
        entry = json.loads(index.read_text())
        converted, original = entry["file"], entry.get("original_file")
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointMismatchError(f"{index} is not an elqproj convert index: {exc}") from exc
    return converted if filename is None or filename == original else filename


def _download_url(url: str, *, sha256: str | None, offline: bool) -> Path:
    """The cached copy of ``url`` (checked against ``sha256`` or the checksum recorded at its download),
    downloading it first when it is not cached."""
    target = url_cache_path(url)
    if target.is_file():
        verify_recorded(target, expected=sha256, fix=f"delete {target} and run the command again to download it")
        return target
    if offline:
        raise _not_found(f"{url} in the elqproj cache ({target})", None,
                         hint="Unset HF_HUB_OFFLINE to download it, or pass a local path.")
    return download_url(url, target, sha256=sha256)


def _verify_hub_blob(path: Path) -> None:
    """A Hub LFS file sits in the cache as ``blobs/<sha256>``: check its bytes against that name."""
    blob = path.resolve()
    if blob.parent.name == "blobs" and len(blob.name) == 64 and all(c in "0123456789abcdef" for c in blob.name):
        verify_recorded(blob, expected=blob.name, fix=f"delete {blob} and {path}, then load it again to download it")


def load_state_strictly(model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, unknown: Sequence[str] = (),
                        source: str, what: str, fix: str) -> None:
    """``model.load_state_dict(state, strict=True)``, all or nothing, after a check that names every problem:
    keys ``model`` needs that ``state`` lacks, keys it does not know (plus ``unknown``: keys the caller could
    not map), and shapes that differ.

    Raises:
        CheckpointMismatchError: ``"{source} does not fit {what}: <problems>. {fix}"``.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = list(unknown) + sorted(set(state) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label} {len(items)}: {items[:5]}{' …' if len(items) > 5 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", shapes))
                 if items]
        raise CheckpointMismatchError(f"{source} does not fit {what}: " + "; ".join(parts) + f". {fix}")
    model.load_state_dict(state, strict=True)


def load_checkpoint(path: WeightsSpec, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file into a dict without executing code.

    * ``.safetensors``: tensors by key; non-tensor entries stored as JSON strings in the metadata
      (the form elqproj and the golden sets use for official dicts) are decoded and merged. Dotted keys
      ``"a.b"`` whose prefix ``a`` is a metadata-declared group are *not* nested: callers see flat keys.
      A file written by :func:`save_checkpoint` comes back as the dict that was saved.
    * pickles (``.pkl``, ``.pth``, ``.pt``, ``.bin``, ``.ckpt``): ``torch.load(weights_only=True)``, once;
      the dict is then kept as safetensors in ``cache_dir()/converted`` (keyed by the pickle's path, size
      and modification time) and later loads read that copy (no unpickling at all).

    Raises:
        UnsafeCheckpointError: the pickle references globals outside torch's safe allow-list
            (arbitrary code execution attempt, or a checkpoint that pickled whole Python objects).
        CheckpointMismatchError: the file is unreadable or not a checkpoint.
    """
    path = Path(os.fspath(path))
    if path.suffix != ".safetensors" and path.is_file() and (copy := _converted_copy(path)).is_file():
        return load_checkpoint(copy, map_location=map_location)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            tensors: dict[str, Any] = dict(load_file(str(path), device=str(map_location)))
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointMismatchError(f"{path} is not a readable safetensors file: {exc}") from exc
        nested = json.loads(meta.pop(_NESTED, "[]"))
        for key, value in meta.items():
            if key == "format":
                continue
            try:
                tensors[key] = json.loads(value)
            except json.JSONDecodeError:
                tensors[key] = value
        return _regroup(tensors, nested)  # written by save_checkpoint: rebuild its dicts
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
    try:
        save_checkpoint(obj, _converted_copy(path))
    except (CheckpointMismatchError, OSError) as exc:  # not convertible (or a read-only cache): read it as is
        logger.info("kept %s as a pickle: %s", path, exc)
    return obj


def _converted_copy(pickle_path: Path) -> Path:
    """Where the safetensors copy of a pickled checkpoint is kept (a new copy when the pickle changes)."""
    stat = pickle_path.stat()
    key = hashlib.sha256(f"{pickle_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:24]
    return cache_dir() / "converted" / key / f"{pickle_path.stem}.safetensors"


def save_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a checkpoint dict (an official pickle's content) as safetensors, atomically, such that
    :func:`load_checkpoint` gives the same dict back: tensors as they are; dicts (at any depth) flattened
    to ``"<key>.<name>"`` entries, each dict's key path recorded in the metadata; any other value as JSON
    in the metadata (tuples come back as lists).

    Raises:
        CheckpointMismatchError: a value that is none of these, or keys that would collide once flattened.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, Any] = {}
    groups: list[list[str]] = []

    def flatten(node: dict[str, Any], trail: list[str]) -> None:
        for key, value in node.items():
            name = ".".join([*trail, str(key)])
            if isinstance(value, torch.Tensor):
                tensors[name] = value
            elif isinstance(value, dict) and any(isinstance(v, (torch.Tensor, dict)) for v in value.values()):
                groups.append([*trail, str(key)])
                flatten(value, [*trail, str(key)])
            elif trail:
                raise CheckpointMismatchError(f"entry {name!r} ({type(value).__name__}) sits in a dict of tensors; "
                                              "it cannot be stored")
            else:
                values[name] = value
    flatten(checkpoint, [])
    if sorted(_regroup(dict.fromkeys(tensors), groups)) != sorted(k for k in checkpoint if k not in values):
        raise CheckpointMismatchError(f"keys of {sorted(checkpoint)[:5]}... collide once flattened")
    try:
        metadata = {key: json.dumps(value) for key, value in values.items()}
    except TypeError as exc:
        raise CheckpointMismatchError(f"a non-tensor entry cannot be stored as JSON: {exc}") from exc
    metadata[_NESTED] = json.dumps(groups)
    storages: set[int] = set()
    unique = {}
    for key, tensor in tensors.items():  # safetensors stores each tensor on its own contiguous storage
        tensor = tensor.detach()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in storages or not tensor.is_contiguous() or tensor.untyped_storage().nbytes() != tensor.nbytes:
            tensor = tensor.contiguous().clone()
        storages.add(pointer)
        unique[key] = tensor.cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    save_file(unique, str(temporary), metadata=metadata)
    os.replace(temporary, path)
    return path


def _regroup(flat: dict[str, Any], groups: list[list[str]]) -> dict[str, Any]:
    """Undo :func:`save_checkpoint`'s flattening: fold the entries of each recorded dict, deepest first."""
    for trail in sorted(groups, key=len, reverse=True):
        prefix = ".".join(trail) + "."
        folded = {key[len(prefix):]: flat.pop(key) for key in [k for k in flat if k.startswith(prefix)]}
        flat[".".join(trail)] = folded  # a parent, folded later, takes it in under its last name
    return flat


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
