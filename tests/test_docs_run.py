"""The Python blocks of the README and of docs/ run as written, on the tiny fixtures standing in for the
released weights.

Each file's blocks run in order in one namespace (a doc is one story) in a working folder that holds the
files the docs name, as a user's machine would: ``photo.jpg``, ``old_scan.jpg``, ``scan.jpg``,
``scan16.tif``, ``osediff.pkl``, ``seesr/`` and ``preset/models/`` (the official layout), ``DAPE.pth``,
``de_net.pth``, ``ckpts/``, ``my-projector/``, a training checkpoint, photo folders; the Hub cache serves
the tiny SD fixture under every SD id the restorers default to, the golden S3Diff and RAM checkpoints and a
tiny VLM under their release ids, OSEDiff's GitHub file sits where a first download leaves it, and RAM and
DAPE read the golden 20-tag vocabulary instead of the released 4585-tag lists. Nothing in the blocks is
rewritten.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from elqproj import Projector, cli
from elqproj.adapters.base import RESTORERS
from elqproj.adapters.osediff import OSEDIFF_WEIGHTS_URL
from elqproj.hub import url_cache_path
from elqproj.prompts.base import PROMPT_EXTRACTORS
from elqproj.prompts.ram import RAM_WEIGHTS, load_dape, load_ram
from elqproj.prompts.vlm import DEFAULT_VLM
from tests.conftest import GOLDEN_DIR, OSEDIFF_GOLDEN_PKL, REPO_ROOT, SD21_HUB_ID, TINY_SD21, populate_hf_cache
from tests.prompts.conftest import tiny_vlm  # noqa: F401  (a fixture)

RAM = GOLDEN_DIR / "ram"
DOCS = sorted((REPO_ROOT / "docs").rglob("*.md"))  # the README runs in its own test below


def python_blocks(markdown: str) -> list[str]:
    """The fenced ```python blocks of a Markdown text (indented ones, inside list items, too)."""
    blocks = re.findall(r"^( *)```python\n(.*?)^\1```", markdown, flags=re.S | re.M)
    return [re.sub(rf"^{indent}", "", body, flags=re.M) for indent, body in blocks]


def _tree(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}


def _photo(path: Path, width: int, height: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).random((height, width, 3))
    Image.fromarray((pixels * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def users_folder(tmp_path, offline_hub, tiny_vlm, monkeypatch):  # noqa: F811  (tiny_vlm is the fixture)
    """A working folder with the files the docs name; the Hub cache and registries as described above."""
    sd = _tree(TINY_SD21)
    for repo_id in ("stabilityai/stable-diffusion-2-base", "stabilityai/sd-turbo"):  # SeeSR's and S3Diff's bases
        populate_hf_cache(offline_hub, repo_id, sd)
    populate_hf_cache(offline_hub, "zhangap/S3Diff", {"s3diff.pkl": GOLDEN_DIR / "s3diff" / "s3diff.pkl"})
    ram_repo, ram_file = RAM_WEIGHTS.rsplit("/", 1)
    populate_hf_cache(offline_hub, ram_repo, {ram_file: RAM / "ram_tiny.pth"})
    populate_hf_cache(offline_hub, DEFAULT_VLM, _tree(tiny_vlm))
    osediff_download = url_cache_path(OSEDIFF_WEIGHTS_URL)
    osediff_download.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(OSEDIFF_GOLDEN_PKL, osediff_download)

    for name, (w, h) in {"photo.jpg": (64, 64), "old_scan.jpg": (64, 64), "scan.jpg": (64, 64)}.items():
        _photo(tmp_path / name, w, h, seed=len(name))
    scan16 = (np.random.default_rng(1).random((64, 64, 3)) * 65535).astype(np.uint16)
    import cv2

    cv2.imwrite(str(tmp_path / "scan16.tif"), scan16[..., ::-1])  # OpenCV writes BGR
    _photo(tmp_path / "photos" / "photo.png", 64, 64, seed=2)
    for folder in ("DIV2K_train_HR", "DIV2K_valid_HR", "hq-photos"):
        for i in range(2):
            _photo(tmp_path / folder / f"{i:04d}.png", 512, 512, seed=i)
    shutil.copy(OSEDIFF_GOLDEN_PKL, tmp_path / "osediff.pkl")
    shutil.copy(GOLDEN_DIR / "s3diff" / "de_net.pth", tmp_path / "de_net.pth")
    for folder in (tmp_path, tmp_path / "ckpts", tmp_path / "preset" / "models"):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(RAM / "dape_tiny.pth", folder / "DAPE.pth")
        shutil.copytree(GOLDEN_DIR / "seesr" / "seesr", folder / "seesr")
    shutil.copy(RAM / "ram_tiny.pth", tmp_path / "ckpts" / "ram_swin_large_14m.pth")
    projector = Projector.from_base(SD21_HUB_ID, device="cpu")
    for folder in ("my-projector", "runs/irib-osediff/checkpoint-5000"):
        projector.save_pretrained(tmp_path / folder)
    populate_hf_cache(offline_hub, "org/my-projector", _tree(tmp_path / "my-projector"))

    tags = {"tag_list": RAM / "tags" / "ram_tag_list.txt", "tag_thresholds": RAM / "tags" / "ram_tag_list_threshold.txt"}

    def ram_with_tiny_tags(weights=None, **options):
        return load_ram(weights, **{**tags, **options})

    def dape_with_tiny_tags(weights=None, **options):
        return load_dape(weights, **{**tags, **options})

    monkeypatch.chdir(tmp_path)
    # docs/degradations.md reads what its shell command wrote:
    assert cli.main(["degrade", "photos/", "-o", "degraded/", "--preset", "elq", "--seed", "0", "--save-params", "-q"]) == 0
    with PROMPT_EXTRACTORS.isolated() as extractors, RESTORERS.isolated():
        extractors.register("ram", ram_with_tiny_tags, overwrite=True)
        extractors.register("dape", dape_with_tiny_tags, overwrite=True)
        yield tmp_path


def run_blocks(document: Path) -> dict:
    namespace: dict = {"__name__": "docs"}
    for index, block in enumerate(python_blocks(document.read_text(encoding="utf-8"))):
        exec(compile(block, f"{document.relative_to(REPO_ROOT)} python block {index + 1}", "exec"), namespace)
    return namespace


def test_python_blocks_are_found_in_fences_and_list_items():
    text = "a\n```python\nx = 1\n```\n* item:\n\n  ```python\n  y = 2\n  ```\n```bash\nls\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\n"]


@pytest.mark.parametrize("document", [d for d in DOCS if python_blocks(d.read_text(encoding="utf-8"))],
                         ids=lambda d: str(d.relative_to(REPO_ROOT)))
def test_python_blocks_run_as_written(document, users_folder):
    run_blocks(document)


def test_readme_api_tour_keeps_its_promises(users_folder):
    tour = run_blocks(REPO_ROOT / "README.md")
    w, h = tour["elq_image"].size
    assert tuple(tour["hq"].shape) == (1, 3, 512, 512)  # the 32 px tensor at upscale=4
    assert tour["lq"].size == (w, h)  # f keeps the size
    assert (users_folder / "my-setup" / "pipeline.json").is_file()
    assert tour["pipe"].restorer.name == "seesr" and tour["pipe"].projector is not None
    assert tour["g_alone"].projector is None and tour["g_alone"].restorer is tour["g"]
    assert tour["res"].image.size == (512 * w // h, 512)  # g alone: the short side enlarged to 512
