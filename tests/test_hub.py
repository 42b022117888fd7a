"""Weights resolution and safe checkpoint reading (elqproj.hub)."""

from __future__ import annotations

import hashlib
import http.server
import os
import pickle
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from elqproj import UnsafeCheckpointError, WeightsNotFoundError, load_restorer
from elqproj.errors import IntegrityError, CheckpointMismatchError
from elqproj.hub import cache_dir, load_checkpoint, resolve_dir, resolve_file, url_cache_path
from tests.conftest import SD21_HUB_ID, TINY_SD21, populate_hf_cache


class _Exploit:
    """Unpickling this runs os.system: the classic malicious-checkpoint payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_pickle(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"state_dict_unet": _Exploit(marker)}))
    return path, marker


def test_malicious_pickle_is_refused_without_running_code(tmp_path):
    path, marker = _evil_pickle(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match="evil.pkl"):
        load_checkpoint(path)
    assert not marker.exists()


def test_malicious_pickle_is_refused_by_the_restorer_loader(tmp_path):
    path, marker = _evil_pickle(tmp_path)
    with pytest.raises(UnsafeCheckpointError):
        load_restorer("osediff", weights=path, base_model=TINY_SD21, device="cpu")
    assert not marker.exists()


def test_plain_tensor_pickle_loads(tmp_path):
    path = tmp_path / "ok.pth"
    torch.save({"w": torch.ones(2), "rank": 4, "names": ["a"]}, path)
    state = load_checkpoint(path)
    assert state["rank"] == 4 and state["names"] == ["a"] and torch.equal(state["w"], torch.ones(2))


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.ones(1000)}, good)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointMismatchError, match="bad.pth"):
        load_checkpoint(bad)


def test_safetensors_metadata_entries_are_decoded(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    save_file({"state.w": torch.zeros(2)}, str(path), metadata={"rank": "4", "modules": '["a", "b"]'})
    state = load_checkpoint(path)
    assert state["rank"] == 4 and state["modules"] == ["a", "b"] and state["state.w"].shape == (2,)


def test_hub_directory_resolves_from_the_offline_cache(offline_hub):
    local = resolve_dir(SD21_HUB_ID, required=("unet/config.json",))
    assert (local / "vae" / "config.json").is_file()
    assert str(offline_hub) in str(local)


def test_hub_file_resolves_with_both_spellings(offline_hub):
    a = resolve_file(SD21_HUB_ID, "unet/config.json")
    b = resolve_file(f"{SD21_HUB_ID}/unet/config.json")
    assert a == b and a.is_file()


def test_offline_missing_repo_names_repo_and_fix(offline_hub):
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_dir("nobody/nothing")
    message = str(info.value)
    assert "nobody/nothing" in message and "HF_HUB_OFFLINE" in message and "local path" in message


def test_unknown_revision_is_not_found(offline_hub):
    with pytest.raises(WeightsNotFoundError, match="revision 'v9'"):
        resolve_dir(SD21_HUB_ID, revision="v9")


def test_missing_required_file_is_named(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(WeightsNotFoundError, match="vae/config.json"):
        resolve_dir(tmp_path, required=("vae/config.json",))


def test_revision_selects_the_snapshot(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    cache = tmp_path / "cache"
    v1, v2 = tmp_path / "v1.txt", tmp_path / "v2.txt"
    v1.write_text("one")
    v2.write_text("two")
    populate_hf_cache(cache, "org/model", {"f.txt": v1}, commit="1" * 40)
    populate_hf_cache(cache, "org/model", {"f.txt": v2}, commit="2" * 40)  # main now points to v2
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert resolve_file("org/model", "f.txt").read_text() == "two"
    assert resolve_file("org/model", "f.txt", revision="1" * 40).read_text() == "one"


class _Server:
    def __init__(self, root: Path) -> None:
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_url_download_is_cached_and_checksummed(tmp_path, url_downloads):
    served = tmp_path / "srv"
    served.mkdir()
    (served / "w.pth").write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    with _Server(served) as base:
        path = resolve_file(f"{base}/w.pth", sha256=digest)
        assert path.read_bytes() == b"weights"
        (served / "w.pth").unlink()  # the second call is served from the cache
        assert resolve_file(f"{base}/w.pth", sha256=digest) == path


def test_url_checksum_mismatch_leaves_no_file(tmp_path, url_downloads):
    served = tmp_path / "srv"
    served.mkdir()
    (served / "w.pth").write_bytes(b"tampered")
    with _Server(served) as base, pytest.raises(IntegrityError, match="sha256"):
        resolve_file(f"{base}/w.pth", sha256="0" * 64)
    cached = list(Path(os.environ["ELQPROJ_CACHE"]).rglob("*w.pth*"))
    assert cached == []  # neither the file nor a partial one


def test_a_url_download_lands_at_its_cache_path(tmp_path, url_downloads):
    """url_cache_path tells where resolve_file keeps a URL's file (what an air-gapped machine is given)."""
    (tmp_path / "w.bin").write_bytes(b"weights")
    with _Server(tmp_path) as base:
        url = f"{base}/w.bin"
        assert url_cache_path(url).is_relative_to(cache_dir()) and not url_cache_path(url).exists()
        assert resolve_file(url) == url_cache_path(url) and url_cache_path(url).read_bytes() == b"weights"


def test_url_offline_and_uncached_is_not_found():
    with pytest.raises(WeightsNotFoundError, match="HF_HUB_OFFLINE"):
        resolve_file("https://example.invalid/osediff.pkl")


@pytest.mark.parametrize(("env", "expected"), [
    ({"ELQPROJ_CACHE": "/a", "HF_HOME": "/b", "XDG_CACHE_HOME": "/c"}, "/a"),
    ({"HF_HOME": "/b", "XDG_CACHE_HOME": "/c"}, "/b/elqproj"),
    ({"XDG_CACHE_HOME": "/c"}, "/c/elqproj"),
])
def test_url_downloads_follow_the_cache_variables(monkeypatch, env, expected):
    for variable in ("ELQPROJ_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    assert cache_dir() == Path(expected)


def test_a_restorer_whose_weights_are_missing_offline_says_which_options_give_them(tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        load_restorer("osediff", base_model=TINY_SD21, device="cpu")  # default weights: not cached, offline
    message = str(info.value)
    assert "osediff.pkl" in message and "--backend-weights" in message and "--base-model" in message
    assert "stabilityai/stable-diffusion-2-1-base" in message


def test_a_hub_that_never_answers_is_an_error_not_a_hang(monkeypatch):
    """A server (or proxy) that accepts connections and never replies: huggingface_hub's own client waits
    forever; with elqproj's bound the lookup fails with WeightsNotFoundError."""
    import socket

    import huggingface_hub.constants as constants

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []
    threading.Thread(target=lambda: [accepted.append(listener.accept()) for _ in range(16)], daemon=True).start()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("ELQPROJ_HUB_TIMEOUT", "0.5")
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{listener.getsockname()[1]}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read by huggingface_hub at import
    outcome = {}

    def lookup():
        try:
            resolve_dir("org/never-answers")
        except WeightsNotFoundError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout=60)
    listener.close()
    assert not worker.is_alive(), "the Hub lookup hung"
    assert "org/never-answers" in str(outcome["error"]) and "Timeout" in str(outcome["error"])


def test_a_bad_hub_timeout_setting_is_a_config_error(monkeypatch):
    from elqproj.errors import ConfigError
    from elqproj.hub import hub_timeout

    monkeypatch.setenv("ELQPROJ_HUB_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="ELQPROJ_HUB_TIMEOUT"):
        hub_timeout()


def test_a_file_that_is_no_checkpoint_at_all_is_called_that_not_unsafe(tmp_path):
    png = tmp_path / "photo.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(CheckpointMismatchError, match=r"photo.png is not a PyTorch checkpoint or safetensors file"):
        load_checkpoint(png)
