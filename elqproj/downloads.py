"""Downloads from plain URLs, resumable and verified, and the checksums that guard cached files.

Hub files go through huggingface_hub and Google Drive through gdown (:mod:`elqproj.weights`); everything
else (GitHub release files, a corporate mirror) comes through :func:`download_url`, written by hand
because urllib has no resuming download and huggingface_hub's downloader only speaks to a Hub:

* the bytes go to a hidden ``.<name>.part`` file beside the target; a killed or cut download resumes
  from there with an HTTP ``Range`` request (a server that ignores it sends the whole file again);
* the finished file is checked against the published sha256 when there is one, and moved into place
  atomically, so the cache never holds a half-written file under the real name;
* its sha256 is recorded beside it (``<name>.sha256``) and :func:`verify_recorded` checks it again at
  every load (once per process per file), so a file truncated or replaced later is caught.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from .errors import IntegrityError, WeightsNotFoundError

__all__ = ["download_url", "file_sha256", "record_checksum", "verify_recorded", "checksum_path"]

_CHUNK = 1 << 20
#: Files hashed in this process: path -> (size, mtime_ns, sha256) when hashed.
_HASHED: dict[Path, tuple[int, int, str]] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_path(path: Path) -> Path:
    """Where the sha256 recorded at download is kept: ``<name>.sha256`` beside the file."""
    return path.with_name(path.name + ".sha256")


def record_checksum(path: Path, sha256: str | None = None) -> str:
    """Record ``path``'s sha256 (computed unless given) beside it; returns it."""
    digest = sha256 or file_sha256(path)
    checksum_path(path).write_text(digest + "\n")
    _HASHED[path] = (*_stamp(path), digest)
    return digest


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _sha256_once(path: Path) -> str:
    """``path``'s sha256, hashed again only when its size or modification time changed in this process."""
    stamp = _stamp(path)
    known = _HASHED.get(path)
    if known is None or known[:2] != stamp:
        known = (*stamp, file_sha256(path))
        _HASHED[path] = known
    return known[2]


def verify_recorded(path: Path, *, expected: str | None = None, fix: str = "delete it and download it again") -> None:
    """Check ``path`` against ``expected`` or the sha256 recorded at its download (no record: nothing to
    check). A file already verified in this process and unchanged since is not hashed again.

    Raises:
        IntegrityError: naming the file, both checksums and ``fix``.
    """
    record = checksum_path(path)
    if expected is None and not record.is_file():
        return
    wanted = (expected or record.read_text().strip()).lower()
    actual = _sha256_once(path)
    if actual != wanted:
        raise IntegrityError(
            f"{path} is corrupt, truncated or not the expected release: its sha256 is {actual}, expected {wanted}. "
            f"To fix it, {fix}."
        )


def download_url(url: str, target: Path, *, sha256: str | None = None, progress: bool = True,
                 timeout: float = 60) -> Path:
    """Download ``url`` to ``target`` (see the module docstring: resumable, verified, atomic, recorded).

    Raises:
        WeightsNotFoundError: the server cannot be reached or refuses the file.
        IntegrityError: the finished file does not match ``sha256`` (the partial file is removed).
    """
    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.part")
    done = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = done > 0 and response.status == 206
            if not resumed:
                done = 0
            length = int(response.headers.get("Content-Length") or 0)
            received = 0
            with open(part, "ab" if resumed else "wb") as out, \
                    tqdm(total=done + length or None, initial=done, unit="B", unit_scale=True, desc=target.name,
                         disable=not progress, leave=False) as bar:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
            if length and received < length:  # the server closed the connection early
                raise ConnectionError(f"the connection closed after {done + received} of {done + length} bytes")
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and done:  # nothing left to send: the partial file is complete
            pass
        else:
            raise WeightsNotFoundError(f"{url} answered HTTP {exc.code} ({exc.reason}); check the URL, or download "
                                       f"the file yourself and put it at {target}.") from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:  # refused, cut, timed out
        kept = f" ({part.stat().st_size} bytes kept in {part.name}: the next attempt resumes)" if part.is_file() else ""
        raise WeightsNotFoundError(f"Downloading {url} failed: {exc}{kept}. Check the connection (or set "
                                   f"ELQPROJ_MIRROR), or put the file at {target} yourself.") from exc
    digest = file_sha256(part)
    if sha256 is not None and digest != sha256.lower():
        part.unlink()
        raise IntegrityError(f"{url} sent a file whose sha256 is {digest}, but {sha256} is published for it: the "
                             "download was corrupted or the file was replaced. Nothing was kept; try again, or use "
                             "another mirror.")
    os.replace(part, target)
    record_checksum(target, digest)
    return target
