"""The runnable examples, on the tiny fixtures (each is also a user-facing recipe)."""

from __future__ import annotations

import importlib.util
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from elqproj import Projector
from tests.conftest import OSEDIFF_GOLDEN_PKL, REPO_ROOT, TINY_SD21


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO_ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def projector_dir(tmp_path_factory) -> Path:
    return Projector.from_base(TINY_SD21, device="cpu").save_pretrained(tmp_path_factory.mktemp("ex") / "proj")


def _photo(path: Path, w: int = 32, h: int = 32, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_restore_folder_example(tmp_path, projector_dir):
    _photo(tmp_path / "in" / "a.png")
    _photo(tmp_path / "in" / "b.png", seed=1)
    code = _example("restore_folder").main([
        str(tmp_path / "in"), str(tmp_path / "out"), "--projector", str(projector_dir),
        "--backend-weights", str(OSEDIFF_GOLDEN_PKL), "--base-model", str(TINY_SD21), "--lfo", "1",
        "--prompt", "a photo", "--process-size", "64", "--device", "cpu",
    ])
    assert code == 0 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png", "manifest.jsonl"]


def test_web_service_example_serves_many_requests_with_models_loaded_once(tmp_path, projector_dir):
    web = _example("web_service")
    projector = Projector.from_pretrained(projector_dir, device="cpu", base_model=TINY_SD21)
    service = web.RestorationService(projector, "osediff", weights=OSEDIFF_GOLDEN_PKL, process_size=64)
    server = web.make_server(service, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/restore?seed=0"
    try:
        bodies = []
        for seed in (0, 1):
            data = _photo(tmp_path / f"p{seed}.png", seed=seed).read_bytes()
            with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=120) as resp:
                assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
                bodies.append(resp.read())
        assert all(Image.open(__import__("io").BytesIO(b)).size == (64, 64) for b in bodies)
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(urllib.request.Request(url, data=b"not an image"), timeout=60)
        assert bad.value.code == 400 and "not a readable image" in json.loads(bad.value.read())["error"]
    finally:
        server.shutdown()
        server.server_close()
    assert len(projector._pipelines) == 1  # the pipeline (and its restorer) was built once, at start-up


def test_register_restorer_example(tmp_path, projector_dir):
    out = tmp_path / "o.png"
    _example("register_restorer").main([
        str(_photo(tmp_path / "i.png")), str(out), "--projector", str(projector_dir), "--base-model",
        str(TINY_SD21), "--process-size", "64", "--device", "cpu",
    ])
    assert Image.open(out).size == (64, 64)
