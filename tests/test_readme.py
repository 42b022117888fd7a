"""The README's Python blocks run as written, on the tiny fixtures standing in for the released weights.

The stand-ins, set up as a user's machine would have the real files: the Hub cache serves the tiny SD2.1
fixture under both SD ids the restorers default to, the working folder holds the files the README names
(``old_scan.jpg``, ``osediff.pkl``, ``seesr/``, ``DAPE.pth``: the golden checkpoints in the official
formats), and the ``ram`` / ``dape`` extractors default to the golden tiny RAM (whose 20-tag vocabulary
replaces the released 4585-tag one). Nothing in the blocks is rewritten.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from PIL import Image

from elqproj.prompts.base import PROMPT_EXTRACTORS
from elqproj.prompts.ram import load_dape, load_ram
from tests.conftest import GOLDEN_DIR, OSEDIFF_GOLDEN_PKL, REPO_ROOT, TINY_SD21, populate_hf_cache

SD2_HUB_ID = "stabilityai/stable-diffusion-2-base"  # SeeSR's base
RAM = GOLDEN_DIR / "ram"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


@pytest.fixture
def users_folder(tmp_path, offline_hub, monkeypatch):
    """A working folder with the files the README names, and the extractors' defaults on the tiny RAM."""
    files = {str(p.relative_to(TINY_SD21)): p for p in TINY_SD21.rglob("*") if p.is_file()}
    populate_hf_cache(offline_hub, SD2_HUB_ID, files)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 96, 3)) * 255).astype(np.uint8)).save(tmp_path / "old_scan.jpg")
    shutil.copy(OSEDIFF_GOLDEN_PKL, tmp_path / "osediff.pkl")
    shutil.copytree(GOLDEN_DIR / "seesr" / "seesr", tmp_path / "seesr")
    shutil.copy(RAM / "dape_tiny.pth", tmp_path / "DAPE.pth")
    tags = {"tag_list": RAM / "tags" / "ram_tag_list.txt", "tag_thresholds": RAM / "tags" / "ram_tag_list_threshold.txt"}

    def tiny_ram(weights=None, **options):
        return load_ram(weights or RAM / "ram_tiny.pth", **tags, **options)

    def tiny_dape(weights=None, **options):
        return load_dape(weights, ram_weights=RAM / "ram_tiny.pth", **tags, **options)

    monkeypatch.chdir(tmp_path)
    with PROMPT_EXTRACTORS.isolated() as registry:
        registry.register("ram", tiny_ram, overwrite=True)
        registry.register("dape", tiny_dape, overwrite=True)
        yield tmp_path


def test_readme_python_blocks_run_as_written_and_keep_their_promises(users_folder):
    blocks = python_blocks((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
    assert blocks, "the README has no Python block"
    namespace: dict = {"__name__": "readme"}
    for index, block in enumerate(blocks):  # one story: later blocks may use earlier names
        exec(compile(block, f"README.md python block {index + 1}", "exec"), namespace)
    # The API tour's comments, checked on its own results.
    w, h = namespace["elq_image"].size
    assert tuple(namespace["hq"].shape) == (1, 3, 512, 512)  # the 32 px tensor at upscale=4
    assert namespace["lq"].size == (w, h)  # f keeps the size
    assert (users_folder / "my-projector" / "config.json").is_file()
    assert (users_folder / "my-setup" / "pipeline.json").is_file()
    assert namespace["pipe"].restorer.name == "seesr" and namespace["pipe"].projector is not None
    assert namespace["g_alone"].projector is None and namespace["g_alone"].restorer is namespace["g"]
    assert namespace["res"].image.size == (512 * w // h, 512)  # g alone: the short side enlarged to 512
