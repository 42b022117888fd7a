"""The web demo: a real headless Chromium drives the page served on the tiny fixture; gradio_client calls
its endpoint; the request handler's checks and the ``elqproj demo`` command are tested directly.

The browser is the system's Chromium and its chromedriver (``.ci/run`` installs both with apt);
``ELQPROJ_CHROMIUM`` / ``ELQPROJ_CHROMEDRIVER`` point elsewhere. ``ELQPROJ_SCREENSHOT_DIR`` also keeps the
screenshots there (docs/images/demo.png was taken that way).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from elqproj.cli import main
from elqproj.demo import DemoDefaults, DemoModels, build_demo, launch_demo, restore_request
from elqproj.errors import InvalidInputError
from elqproj.pipeline import RestorationPipeline
from elqproj.seeding import file_seed
from tests.conftest import OSEDIFF_GOLDEN_PKL, TINY_SD21

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _photo(path: Path, w: int = 48, h: int = 36) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def models(projector_dir):
    pipe = RestorationPipeline.from_components(
        projector=projector_dir, projector_options={"base_model": str(TINY_SD21)}, restorer="osediff",
        restorer_options={"weights": str(OSEDIFF_GOLDEN_PKL)}, device="cpu")
    return DemoModels.from_pipeline(pipe, backend="osediff")


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    """The page on the tiny fixture (process size 64, LFO 1), on a free loopback port, 1 MB upload limit."""
    demo = build_demo(models, defaults=DemoDefaults(process_size=64, lfo="1", prompt_text="an old photo"),
                      output_dir=tmp_path_factory.mktemp("demo-out"))
    _, url, _ = launch_demo(demo, port=_free_port(), max_upload_mb=1, block=False)
    yield url
    demo.close()


def _chromium() -> tuple[str, str]:
    browser = os.environ.get("ELQPROJ_CHROMIUM") or next(
        (found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))), None)
    driver = os.environ.get("ELQPROJ_CHROMEDRIVER") or shutil.which("chromedriver")
    if not browser or not driver:
        pytest.fail("The browser test needs Chromium and its chromedriver: `apt-get install chromium chromium-driver` "
                    "(.ci/run does), or set ELQPROJ_CHROMIUM and ELQPROJ_CHROMEDRIVER.")
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver

    binary, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    yield driver
    driver.quit()


def _screenshot(driver, tmp_path: Path, name: str) -> None:
    driver.save_screenshot(str(tmp_path / name))
    if folder := os.environ.get("ELQPROJ_SCREENSHOT_DIR"):
        shutil.copy(tmp_path / name, Path(folder) / name)
    assert (tmp_path / name).stat().st_size > 0


def _upload_and_restore(driver, url: str, path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(path.resolve()))
    WebDriverWait(driver, 30).until(lambda d: path.stem in d.find_element(By.ID, "upload").text)
    driver.find_element(By.ID, "restore-button").click()


def test_the_page_restores_an_upload_and_shows_slider_prompt_trace_and_timings(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = _photo(tmp_path / "scan.png", 48, 36)  # enlarged to a 64 px short side: 85x64
    _upload_and_restore(browser, server, photo)

    def loaded_slider_images(driver):
        images = driver.find_elements(By.CSS_SELECTOR, "#slider img")
        sizes = [driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", i)
                 for i in images]
        return [s for s in sizes if s[0] > 0] if len(sizes) >= 2 else None

    sizes = WebDriverWait(browser, 120).until(lambda d: (s := loaded_slider_images(d)) and len(s) >= 2 and s)
    assert sizes[:2] == [[85, 64], [85, 64]]  # before (enlarged to the result) and after, the result's size
    trace = browser.find_element(By.CSS_SELECTOR, "#prompts textarea").get_attribute("value")
    assert "pass 1 (f, prompt from the input): 'an old photo'" in trace and "g (restorer): 'an old photo'" in trace
    assert "restore" in browser.find_element(By.ID, "timings").text
    link = browser.find_element(By.CSS_SELECTOR, "#download a").get_attribute("href")
    with urllib.request.urlopen(link, timeout=30) as response:  # the download is the full-resolution PNG
        assert link.endswith("scan_restored.png") and Image.open(io.BytesIO(response.read())).size == (85, 64)
    _screenshot(browser, tmp_path, "demo.png")


def test_a_corrupt_upload_shows_the_error_in_the_page(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 cut short")
    _upload_and_restore(browser, server, broken)
    WebDriverWait(browser, 60).until(lambda d: "could not be decoded" in d.find_element(By.TAG_NAME, "body").text)
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "image file 'broken.jpg'" in text and "Traceback" not in text
    _screenshot(browser, tmp_path, "demo-error.png")


def test_the_restore_endpoint_answers_gradio_client(server, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    slider, lq, prompts, timings, download = client.predict(
        handle_file(str(_photo(tmp_path / "scan.png", 64, 64))), "osediff", "text", "a house", "1", 0, 2,
        "official", "auto", api_name="/restore")
    assert Image.open(download).size == (128, 128) and Image.open(lq).size == (128, 128)
    assert [Image.open(p).size for p in slider] == [(128, 128), (128, 128)]
    assert "'a house'" in prompts and "| total |" in timings


def test_the_batch_endpoint_restores_every_good_file_and_reports_the_bad_one(server, tmp_path):
    from gradio_client import Client, handle_file

    files = [_photo(tmp_path / "a.png", 40, 32), _photo(tmp_path / "b.png", 64, 64)]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 cut short")
    gallery, table, archive = Client(server, verbose=False).predict(
        [handle_file(str(p)) for p in [*files, broken]], "osediff", "text", "a house", "0", 7, 1, "official", "auto",
        api_name="/restore_batch")
    rows = {row[0]: row for row in table["data"]}
    assert rows["a.png"][1] == "done" and rows["b.png"][1] == "done" and rows["a.png"][3] == "a house"
    assert rows["broken.jpg"][1] == "failed" and "image file 'broken.jpg'" in rows["broken.jpg"][3]
    assert sorted(Image.open(item["image"]).size for item in gallery) == [(64, 64), (80, 64)]
    with zipfile.ZipFile(archive) as bundle:
        assert sorted(bundle.namelist()) == ["a.png", "b.png", "manifest.jsonl"]
        seeds = {json.loads(line)["input"].rsplit("/", 1)[-1]: json.loads(line)["seed"]
                 for line in bundle.read("manifest.jsonl").decode().splitlines()}
    assert seeds["a.png"] == file_seed(7, "a.png")  # the same per-file seed as `elqproj restore --seed 7`


def test_uploads_above_the_size_limit_are_refused(server, tmp_path):
    from gradio_client import Client, handle_file

    big = tmp_path / "big.png"
    Image.fromarray((np.random.default_rng(1).random((800, 800, 3)) * 255).astype(np.uint8)).save(big)
    assert big.stat().st_size > 1_000_000  # the server was started with a 1 MB limit
    with pytest.raises(Exception, match="(?i)exceed|too large|413|maximum"):
        Client(server, verbose=False).predict(handle_file(str(big)), "osediff", "none", "", "0", 0, 1, "official",
                                              "auto", api_name="/restore")


@pytest.mark.parametrize(("change", "message"), [
    ({"upload": None}, "Upload an image first"),
    ({"prompt_mode": "text", "prompt_text": " "}, "type a prompt"),
    ({"backend": "seesr"}, "not loaded here"),
    ({"lfo": "9"}, "LFO must be one of"),
    ({"color_fix": "sepia"}, "colour fix must be one of"),
    ({"mode": "smart"}, "mode must be one of"),
])
def test_a_bad_request_is_a_clear_error_before_any_work(models, tmp_path, change, message):
    request = dict(upload=str(_photo(tmp_path / "a.png")), backend="osediff", prompt_mode="none", prompt_text="",
                   lfo="0", seed=0, upscale=1, color_fix="official", tiling="auto")
    request.update(change)
    with pytest.raises(InvalidInputError, match=message):
        restore_request(models, DemoDefaults(process_size=64), output_dir=tmp_path, **request)


def test_elqproj_demo_loads_every_model_once_and_serves_them(monkeypatch, projector_dir):
    import elqproj.demo

    launched = {}
    monkeypatch.setattr(elqproj.demo, "launch_demo", lambda demo, **options: launched.update(demo=demo, **options))
    assert main(["demo", "--projector", str(projector_dir), "--base-model", str(TINY_SD21), "--backend-weights",
                 str(OSEDIFF_GOLDEN_PKL), "--device", "cpu", "--port", "7999", "--max-upload-mb", "5",
                 "--add-backend", f"osediff-again={OSEDIFF_GOLDEN_PKL}"]) == 2  # an unregistered name
    assert main(["demo", "--projector", str(projector_dir), "--base-model", str(TINY_SD21), "--backend-weights",
                 str(OSEDIFF_GOLDEN_PKL), "--device", "cpu", "--port", "7999", "--max-upload-mb", "5",
                 "--lfo", "2", "--prompt", "a cat"]) == 0
    assert launched["port"] == 7999 and launched["max_upload_mb"] == 5 and launched["concurrency"] == 1
    config = launched["demo"].config
    values = {c["props"].get("elem_id"): c["props"].get("value") for c in config["components"]}
    assert values["lfo"] == "2" and values["prompt-mode"] == "text" and values["prompt-text"] == "a cat"


def test_auto_mode_shows_the_decision_above_the_timings(models, tmp_path, monkeypatch):
    import elqproj.auto

    class DarkIsSevere:
        def __init__(self, config, device=None):
            self.config = config

        def __call__(self, images):
            return [12.0 for _ in images]

    monkeypatch.setattr(elqproj.auto, "SeverityScorer", DarkIsSevere)
    *_, summary, _ = restore_request(models, DemoDefaults(process_size=64), str(_photo(tmp_path / "a.png")), "osediff",
                                     "none", "", "0", 0, 1, "official", "auto", 1.0, "auto", output_dir=tmp_path)
    assert summary.startswith("**Auto mode:** severe (musiq 12.0): f at strength 1, LFO×2")

