"""Shared test fixtures: offline Hub, golden and fixture locations, tiny models.

Every test runs offline on the CPU. The golden vectors and the tiny SD2.1 fixture live in the shared
folder beside the checkout (``../shared``); ``ELQPROJ_GOLDEN_DIR`` / ``ELQPROJ_FIXTURES_DIR`` override.
``ELQPROJ_TEST_THREADS`` sets torch's thread count for the whole run.
"""

from __future__ import annotations

import os
from pathlib import Path

# Before anything imports huggingface_hub: no test may reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads sleep instead of spinning: on a shared 2-core runner spinning makes every small
# op wait for a descheduled sibling thread.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
GOLDEN_DIR = Path(os.environ.get("ELQPROJ_GOLDEN_DIR", SHARED_DIR / "golden"))
FIXTURES_DIR = Path(os.environ.get("ELQPROJ_FIXTURES_DIR", SHARED_DIR / "fixtures"))
TINY_SD21 = FIXTURES_DIR / "tiny-sd21"



def configured_threads() -> int:
    """torch's intra-op thread count for the whole run: ``ELQPROJ_TEST_THREADS`` (a positive integer),
    else the machine's cores shared among pytest-xdist's workers, at most 2 each. The golden tests pass at
    any count (CI also runs them at 1)."""
    value = os.environ.get("ELQPROJ_TEST_THREADS", "").strip()
    if not value:
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        return max(1, min(2, (os.cpu_count() or 1) // workers))
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"ELQPROJ_TEST_THREADS must be a positive integer, got {value!r}")
    return int(value)


torch.set_num_threads(configured_threads())


def pytest_report_header(config) -> str:
    return f"elqproj: torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s) (ELQPROJ_TEST_THREADS)"


def golden_set(name: str) -> Path:
    """Path of one golden set; a missing set fails the test (golden tests are never skipped)."""
    path = GOLDEN_DIR / name
    if not (path / "README.md").is_file():
        raise FileNotFoundError(
            f"golden set {name!r} not found at {path}; set ELQPROJ_GOLDEN_DIR to the shared golden/ folder"
        )
    return path


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """Keep every test's downloads/caches away from the user's home directory and from each other."""
    monkeypatch.setenv("ELQPROJ_CACHE", str(tmp_path_factory.mktemp("elqproj_cache")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def url_downloads(monkeypatch) -> None:
    """elqproj's own downloader may fetch from servers a test starts on 127.0.0.1, while huggingface_hub
    stays offline (its offline flag is read once, at import, from the HF_HUB_OFFLINE=1 set above)."""
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert constants.HF_HUB_OFFLINE, "huggingface_hub must stay offline in the tests"


@pytest.fixture(scope="session")
def tiny_sd21() -> Path:
    if not (TINY_SD21 / "model_index.json").is_file():
        raise FileNotFoundError(f"tiny SD2.1 fixture not found at {TINY_SD21}")
    return TINY_SD21


OSEDIFF_GOLDEN_PKL = GOLDEN_DIR / "osediff" / "osediff.pkl"
#: The Hub id the offline cache below serves the tiny SD2.1 fixture under (the real default base).
SD21_HUB_ID = "stabilityai/stable-diffusion-2-1-base"


def populate_hf_cache(cache: Path, repo_id: str, files: dict[str, Path], *, commit: str = "0" * 40) -> Path:
    """Lay out ``files`` (repo path -> source file) as huggingface_hub's cache does for ``repo_id``:
    ``models--org--name/{blobs,snapshots/<commit>,refs/main}``. Returns the snapshot directory."""
    import hashlib
    import shutil

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for rel, src in files.items():
        data = Path(src).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        target = snapshot / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            target.unlink()
        try:
            target.symlink_to(Path("../" * (len(Path(rel).parts) + 1)) / "blobs" / blob.name)
        except OSError:  # filesystems without symlinks: huggingface_hub copies too
            shutil.copyfile(blob, target)
    return snapshot


@pytest.fixture(scope="session")
def hf_cache(tmp_path_factory, tiny_sd21) -> Path:
    """An offline huggingface_hub cache serving the tiny SD2.1 fixture as the real SD2.1-base id."""
    cache = tmp_path_factory.mktemp("hf_cache")
    files = {str(p.relative_to(tiny_sd21)): p for p in tiny_sd21.rglob("*") if p.is_file()}
    populate_hf_cache(cache, SD21_HUB_ID, files)
    return cache


@pytest.fixture
def offline_hub(hf_cache, monkeypatch) -> Path:
    """Point huggingface_hub at :func:`hf_cache` (it reads its cache constant at call time)."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    return hf_cache


@pytest.fixture(scope="session")
def projector_dir(tmp_path_factory) -> Path:
    """A fresh projector on the tiny SD2.1 fixture, saved as a Projector directory."""
    from elqproj import Projector

    return Projector.from_base(TINY_SD21, device="cpu").save_pretrained(tmp_path_factory.mktemp("proj") / "p")


# ------------------------------------------------------------------ metrics (pyiqa)
MUSIQ_FILE = "musiq_koniq_ckpt-e95806b9.pth"
#: A MUSIQ small enough to build in milliseconds (the real one: 14 layers of width 384).
TINY_MUSIQ = {"hidden_size": 32, "mlp_dim": 32, "num_heads": 2, "num_layers": 1, "longer_side_lengths": [64]}


@pytest.fixture
def hub_dir(tmp_path, monkeypatch) -> Path:
    """torch.hub's folder (pyiqa's cache is its pyiqa/ subfolder) in a temporary TORCH_HOME."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # no earlier torch.hub.set_dir overrides TORCH_HOME
    return tmp_path / "torch" / "hub"


@pytest.fixture
def tiny_musiq(hub_dir) -> torch.nn.Module:
    """A randomly initialised tiny MUSIQ, saved where pyiqa looks for the KonIQ checkpoint."""
    from pyiqa.archs.musiq_arch import MUSIQ

    torch.manual_seed(0)
    net = MUSIQ(pretrained=False, **TINY_MUSIQ).eval()
    (hub_dir / "pyiqa").mkdir(parents=True)
    torch.save(net.state_dict(), hub_dir / "pyiqa" / MUSIQ_FILE)
    return net
