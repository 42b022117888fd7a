"""Weights one command away: the table, downloads (progress, resume, checksums, mirror, offline, Google
Drive's confirmation page), pickles converted once, ``elqproj convert`` and ``elqproj download``.

Every download comes from a server started here on 127.0.0.1; Google Drive's hosts are routed to it; Hub
files come from local caches laid out as huggingface_hub lays them out (huggingface_hub stays offline).
"""

from __future__ import annotations

import hashlib
import http.server
import importlib
import json
import threading
import urllib.parse
from pathlib import Path

import pytest
import requests.adapters
import torch

from elqproj import hub
from elqproj.cli import main
from elqproj.conversion import convert_component
from elqproj.downloads import checksum_path
from elqproj.errors import IntegrityError, InvalidInputError, UnknownNameError, WeightsNotFoundError
from elqproj.weights import COMPONENTS, cached_path, fetch, get_component
from tests.conftest import GOLDEN_DIR, OSEDIFF_GOLDEN_PKL, populate_hf_cache

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB: several blocks, so a cut lands mid-file


class _Files(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` (path -> bytes) with HTTP Range; ``cut`` (path -> n) sends n bytes of the next
    answer for that path and drops the connection; every request is logged as (path, Range header)."""

    files: dict[str, bytes] = {}
    cut: dict[str, int] = {}
    log: list[tuple[str, str | None]] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urllib.parse.urlsplit(self.path)
        self.log.append((self.path, self.headers.get("Range")))
        if url.path == "/uc":  # Google Drive: the "can't scan this file for viruses" page, a form to confirm
            query = urllib.parse.parse_qs(url.query)
            page = ('<html><body><form id="download-form" action="https://drive.usercontent.google.com/download" '
                    f'method="get"><input type="hidden" name="id" value="{query["id"][0]}"><input type="hidden" '
                    'name="export" value="download"><input type="hidden" name="confirm" value="t"></form></body></html>')
            return self._send(200, page.encode(), {"Content-Type": "text/html; charset=utf-8"})
        if url.path == "/download":  # the confirmed Drive download
            query = urllib.parse.parse_qs(url.query)
            body = self.files.get(f"/drive/{query['id'][0]}") if query.get("confirm") == ["t"] else None
            if body is None:
                return self._send(404, b"not confirmed", {})
            return self._send(200, body, {"Content-Type": "application/octet-stream",
                                          "Content-Disposition": 'attachment; filename="DAPE.pth"'})
        body = self.files.get(url.path)
        if body is None:
            return self._send(404, b"missing", {})
        start = 0
        if self.headers.get("Range", "").startswith("bytes="):
            start = int(self.headers["Range"][6:].split("-")[0])
        status = 206 if start else 200
        headers = {"Content-Type": "application/octet-stream"}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        self._send(status, body[start:], headers, cut=self.cut.pop(url.path, None))

    def _send(self, status: int, body: bytes, headers: dict[str, str], cut: int | None = None) -> None:
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body if cut is None else body[:cut])
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)


@pytest.fixture
def server(monkeypatch, url_downloads):
    """The file server on 127.0.0.1 (Hub downloads stay offline); yields its base URL. Tests put files in
    ``_Files.files``."""
    monkeypatch.setattr(_Files, "files", {})
    monkeypatch.setattr(_Files, "cut", {})
    monkeypatch.setattr(_Files, "log", [])
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def mirror(server, monkeypatch):
    monkeypatch.setenv("ELQPROJ_MIRROR", server + "/mirror")
    return server


# ------------------------------------------------------------------ the table


def test_every_restorer_and_extractor_default_comes_from_the_table():
    from elqproj.adapters.osediff import OSEDIFF_WEIGHTS_URL
    from elqproj.adapters.s3diff import DE_NET_URL, S3DIFF_BASE, S3DIFF_WEIGHTS
    from elqproj.adapters.seesr.restorer import SD2_BASE
    from elqproj.onestep import SD21_BASE
    from elqproj.prompts.ram import RAM_WEIGHTS
    from elqproj.prompts.vlm import DEFAULT_VLM

    sources = {c.source for c in COMPONENTS.values()}
    assert {OSEDIFF_WEIGHTS_URL, S3DIFF_WEIGHTS, DE_NET_URL, S3DIFF_BASE, SD2_BASE, SD21_BASE, RAM_WEIGHTS,
            DEFAULT_VLM} <= sources
    for component in COMPONENTS.values():
        assert component.licence and component.used_by and component.format and component.files


def test_an_unknown_component_names_the_known_ones():
    with pytest.raises(UnknownNameError, match="osediff"):
        get_component("osedif")


def test_the_weights_doc_lists_every_component():
    text = (Path(__file__).parents[1] / "docs" / "weights-and-licences.md").read_text()
    assert all(f"`{name}`" in text for name in COMPONENTS)


# ------------------------------------------------------------------ downloads


def test_a_url_component_downloads_through_the_mirror_with_progress_and_a_recorded_checksum(mirror, capsys):
    _Files.files["/mirror/osediff/osediff.pkl"] = PAYLOAD
    path = fetch("osediff")
    assert path == hub.url_cache_path(COMPONENTS["osediff"].source) and path.read_bytes() == PAYLOAD
    assert checksum_path(path).read_text().strip() == hashlib.sha256(PAYLOAD).hexdigest()
    assert "osediff.pkl" in capsys.readouterr().err  # the progress bar
    assert cached_path("osediff") == path and fetch("osediff") == path and len(_Files.log) == 1


def test_a_per_component_mirror_overrides_the_global_one(server, monkeypatch):
    monkeypatch.setenv("ELQPROJ_MIRROR", "http://127.0.0.1:9/unreachable")
    monkeypatch.setenv("ELQPROJ_MIRROR_DE_NET", server + "/other")
    _Files.files["/other/de-net/de_net.pth"] = PAYLOAD
    assert fetch("de-net", progress=False).read_bytes() == PAYLOAD


def test_a_download_cut_mid_file_resumes_where_it_stopped(mirror):
    _Files.files["/mirror/osediff/osediff.pkl"] = PAYLOAD
    _Files.cut["/mirror/osediff/osediff.pkl"] = 300_000
    target = hub.url_cache_path(COMPONENTS["osediff"].source)
    with pytest.raises(WeightsNotFoundError, match="the next attempt resumes"):
        fetch("osediff", progress=False)
    assert not target.exists()  # nothing half-written under the real name
    assert fetch("osediff", progress=False).read_bytes() == PAYLOAD
    assert _Files.log[-1][1] == "bytes=300000-"  # the second request asked only for the rest


def test_a_checksum_mismatch_is_refused_and_nothing_is_kept(mirror, monkeypatch):
    pinned = COMPONENTS["osediff"].model_copy(update={"sha256": hashlib.sha256(b"the real release").hexdigest()})
    monkeypatch.setitem(COMPONENTS, "osediff", pinned)
    _Files.files["/mirror/osediff/osediff.pkl"] = PAYLOAD
    with pytest.raises(IntegrityError, match="published for it"):
        fetch("osediff", progress=False)
    folder = hub.url_cache_path(pinned.source).parent
    assert not folder.exists() or list(folder.iterdir()) == []


def test_a_cached_file_damaged_later_is_caught_at_load_with_the_fix(mirror):
    _Files.files["/mirror/osediff/osediff.pkl"] = PAYLOAD
    path = fetch("osediff", progress=False)
    path.write_bytes(PAYLOAD[:1000])  # truncated by a full disk, say
    with pytest.raises(IntegrityError, match=r"elqproj download osediff"):
        fetch("osediff")
    with pytest.raises(IntegrityError, match="corrupt"):
        hub.resolve_file(COMPONENTS["osediff"].source)


def test_offline_a_cached_component_loads_and_a_missing_one_names_the_command(mirror, monkeypatch):
    _Files.files["/mirror/de-net/de_net.pth"] = PAYLOAD
    path = fetch("de-net", progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fetch("de-net") == path
    with pytest.raises(WeightsNotFoundError, match="elqproj download dape"):
        fetch("dape")


def test_google_drive_answers_the_confirmation_page_and_the_file_lands_in_the_cache(server, monkeypatch):
    module = importlib.import_module("gdown.download")
    original = module._get_session

    class ToLocalServer(requests.adapters.HTTPAdapter):
        def send(self, request, **kwargs):
            parts = urllib.parse.urlsplit(request.url)
            request.url = f"{server}{parts.path}?{parts.query}"
            return super().send(request, **kwargs)

    def session(**options):
        sess, cookies = original(**options)
        for host in ("https://drive.google.com", "https://drive.usercontent.google.com"):
            sess.mount(host, ToLocalServer())
        return sess, cookies

    monkeypatch.setattr(module, "_get_session", session)
    monkeypatch.setenv("HOME", str(Path(hub.cache_dir()).parent))  # gdown keeps its cookies under ~
    _Files.files[f"/drive/{COMPONENTS['dape'].source}"] = PAYLOAD
    path = fetch("dape", progress=False)
    assert path.read_bytes() == PAYLOAD and path.name == "DAPE.pth" and checksum_path(path).is_file()
    assert [p.split("?")[0] for p, _ in _Files.log] == ["/uc", "/download"]  # the page, then the confirmed file
    assert cached_path("dape") == path


def test_a_hub_file_whose_blob_was_damaged_is_caught(offline_hub, tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(PAYLOAD)
    populate_hf_cache(offline_hub, "org/weights", {"w.pth": weights})
    path = hub.resolve_file("org/weights/w.pth")
    path.resolve().write_bytes(PAYLOAD[:10])
    with pytest.raises(IntegrityError, match="corrupt"):
        hub.resolve_file("org/weights/w.pth")


# --------------------------------------------------------- pickles, converted once


def test_a_pickle_is_read_once_and_then_from_its_safetensors_copy(monkeypatch):
    first = hub.load_checkpoint(OSEDIFF_GOLDEN_PKL)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("the pickle was read again"))
    second = hub.load_checkpoint(OSEDIFF_GOLDEN_PKL)
    assert sorted(first) == sorted(second) and first["rank_unet"] == second["rank_unet"]
    for group in ("state_dict_unet", "state_dict_vae"):
        assert all(torch.equal(first[group][k], second[group][k]) for k in first[group])


def test_nested_official_dicts_survive_the_conversion(tmp_path):
    checkpoint = {"rank": 4, "names": ["a", "b"], "w": torch.ones(2), "outer": {"inner": {"weight": torch.zeros(3)},
                                                                              "bias.x": torch.ones(1)}}
    back = hub.load_checkpoint(hub.save_checkpoint(checkpoint, tmp_path / "c.safetensors"))
    assert back["rank"] == 4 and back["names"] == ["a", "b"] and torch.equal(back["w"], torch.ones(2))
    assert torch.equal(back["outer"]["inner"]["weight"], torch.zeros(3)) and set(back["outer"]) == {"inner", "bias.x"}


# ------------------------------------------------------------------- convert


def test_convert_writes_a_hub_ready_folder_that_the_loader_reads(tmp_path):
    folder = convert_component("osediff", OSEDIFF_GOLDEN_PKL, tmp_path / "osediff-hub")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "elqproj_weights.json", "osediff.safetensors"]
    index = json.loads((folder / "elqproj_weights.json").read_text())
    assert index["original_file"] == "osediff.pkl" and index["original_sha256"] == hashlib.sha256(
        OSEDIFF_GOLDEN_PKL.read_bytes()).hexdigest()
    card = (folder / "README.md").read_text()
    assert "license: apache-2.0" in card and "arXiv:2406.08177" in card and 'load_restorer("osediff"' in card
    assert hub.resolve_file(folder) == folder / "osediff.safetensors"
    assert hub.resolve_file(folder, "osediff.pkl") == folder / "osediff.safetensors"  # the official name finds it


def test_a_converted_folder_on_the_hub_is_found_by_its_repository_id(offline_hub, tmp_path):
    folder = convert_component("de-net", GOLDEN_DIR / "s3diff" / "de_net.pth", tmp_path / "de-net")
    populate_hf_cache(offline_hub, "me/de-net", {p.name: p for p in folder.iterdir()})
    assert hub.resolve_file("me/de-net").name == "de_net.safetensors"


def test_convert_refuses_what_is_already_safetensors_on_the_hub(tmp_path):
    with pytest.raises(InvalidInputError, match="nothing to convert"):
        convert_component("sd21-base", tmp_path, tmp_path / "out")


def test_convert_from_the_command_line_and_push_to_hub(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create_repo", repo_id, private))

        def create_branch(self, repo_id, branch, exist_ok=False):
            calls.append(("create_branch", repo_id, branch))

        def upload_folder(self, repo_id, folder_path, revision=None, commit_message=""):
            calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir()), revision))
            return f"https://huggingface.co/{repo_id}/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert main(["convert", "dape", "--from", str(GOLDEN_DIR / "ram" / "dape_tiny.pth"), "--to", str(tmp_path / "d"),
                 "--push-to-hub", "me/dape", "--revision", "v1"]) == 0
    assert calls == [("create_repo", "me/dape", False), ("create_branch", "me/dape", "v1"),
                     ("upload_folder", "me/dape", ["DAPE.safetensors", "README.md", "elqproj_weights.json"], "v1")]
    assert "uploaded to me/dape (v1)" in capsys.readouterr().out


def test_a_converted_seesr_folder_holds_the_official_files(tmp_path):
    official = GOLDEN_DIR / "seesr" / "seesr"
    folder = convert_component("seesr", GOLDEN_DIR / "seesr", tmp_path / "seesr-hub")  # the parent works too
    for file in COMPONENTS["seesr"].files:
        assert (folder / file).read_bytes() == (official / file).read_bytes(), file
    assert "Google Drive" in (folder / "README.md").read_text()


# ----------------------------------------------------------- elqproj download


def test_download_list_says_what_is_cached_where(mirror, capsys):
    _Files.files["/mirror/osediff/osediff.pkl"] = PAYLOAD
    assert main(["download", "osediff", "-q"]) == 0
    capsys.readouterr()
    assert main(["download", "--list", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["osediff"]["cached"] and rows["osediff"]["path"] == str(fetch("osediff"))
    assert not rows["dape"]["cached"] and rows["dape"]["licence"] == "Apache-2.0"
    assert main(["download", "--list"]) == 0
    assert "sd21-base" in capsys.readouterr().out


def test_download_goes_on_past_a_failing_component_and_says_so(mirror, capsys):
    _Files.files["/mirror/de-net/de_net.pth"] = PAYLOAD
    assert main(["download", "osediff", "de-net", "-q"]) == 1  # the mirror lacks osediff.pkl
    out, err = capsys.readouterr()
    assert "de-net:" in out and "osediff" in err and "HTTP 404" in err


# ------------------------------------------- no weights argument at all


@pytest.mark.slow
def test_seesr_with_dape_restores_from_the_cache_with_no_weights_argument(tiny_sd21, tmp_path, monkeypatch):
    """What `elqproj download seesr dape ram sd2-base sd21-base` leaves in the cache is all f, SeeSR and DAPE
    need: offline, no weights argument anywhere (only the tiny tag list stands in for RAM's 4585 tags)."""
    import shutil

    from elqproj import Projector
    from elqproj.weights import _target

    import huggingface_hub.constants as constants

    hub_cache = tmp_path / "hf"  # this test's own Hub cache: the other tests keep theirs without RAM and SD2
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shutil.copytree(GOLDEN_DIR / "seesr" / "seesr", _target(COMPONENTS["seesr"]))
    dape = _target(COMPONENTS["dape"])
    dape.parent.mkdir(parents=True)
    shutil.copy(GOLDEN_DIR / "ram" / "dape_tiny.pth", dape)
    ram_repo, ram_file = COMPONENTS["ram"].source.rsplit("/", 1)
    populate_hf_cache(hub_cache, ram_repo, {ram_file: GOLDEN_DIR / "ram" / "ram_tiny.pth"})
    sd = {str(p.relative_to(tiny_sd21)): p for p in tiny_sd21.rglob("*") if p.is_file()}
    for base in ("sd2-base", "sd21-base"):
        populate_hf_cache(hub_cache, COMPONENTS[base].source, sd)
    assert {name for name in ("seesr", "dape", "ram", "sd2-base", "sd21-base") if cached_path(name)} == {
        "seesr", "dape", "ram", "sd2-base", "sd21-base"}

    tags = {"tag_list": GOLDEN_DIR / "ram" / "tags" / "ram_tag_list.txt",
            "tag_thresholds": GOLDEN_DIR / "ram" / "tags" / "ram_tag_list_threshold.txt"}
    projector = Projector.from_base(device="cpu")  # the SD2.1-base from the cache
    result = projector.restore(torch.rand(1, 3, 64, 64), backend="seesr", prompt_extractor="dape",
                               prompt_extractor_options=tags, process_size=0, seed=0,
                               restorer_options={"steps": 2})
    assert tuple(result.image.shape) == (1, 3, 64, 64) and result.prompts[-1] != ""
