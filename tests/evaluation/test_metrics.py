"""The paper's metrics through pyiqa: pinned settings, hand-checked PSNR/SSIM, weights loaded from pyiqa's
cache without running code, and offline errors that say where each missing file goes.

No test downloads anything: TORCH_HOME points at a temporary folder, and the weight-needing metrics are
checked with small weights written there under the names pyiqa would download them to."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from elqproj.errors import (
    CheckpointMismatchError,
    ConfigError,
    IntegrityError,
    InvalidInputError,
    NumericalError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
)
from elqproj.evaluation import metrics
from elqproj.evaluation.metrics import METRICS, PAPER_METRICS, MetricSuite, metric_specs
from tests.conftest import MUSIQ_FILE, TINY_MUSIQ

IQA_WEIGHTS = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main"
def _constant(rgb: tuple[float, float, float], size: int = 16) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, size, size).contiguous()


def _bt601_y(rgb: np.ndarray) -> np.ndarray:
    """Y of YCbCr (ITU-R BT.601) of RGB in [0, 1], on [0, 1]: (16 + 65.481 R + 128.553 G + 24.966 B) / 255."""
    return (16 + 65.481 * rgb[0] + 128.553 * rgb[1] + 24.966 * rgb[2]) / 255


# --- specs -------------------------------------------------------------------------------------------------

def test_metrics_are_in_the_papers_column_order_with_their_directions():
    assert PAPER_METRICS == ("psnr", "ssim", "lpips", "dists", "fid", "niqe", "musiq", "clipiqa")
    lower_better = {name for name, spec in METRICS.items() if spec.lower_better}
    assert lower_better == {"lpips", "dists", "fid", "niqe"}
    for spec in METRICS.values():
        assert spec.label.endswith("↓" if spec.lower_better else "↑")
    assert {spec.kind for spec in METRICS.values() if spec.name == "fid"} == {"set"}


def test_psnr_and_ssim_default_to_the_y_channel_of_ycbcr():
    psnr, ssim = metric_specs(["psnr", "ssim"])
    for spec in (psnr, ssim):
        assert dict(spec.options) | {"test_y_channel": True, "color_space": "ycbcr"} == dict(spec.options)
        assert "Y of YCbCr (ITU-R BT.601" in spec.settings


def test_rgb_channel_switches_psnr_and_ssim_and_their_settings():
    psnr, ssim, lpips = metric_specs(["psnr", "ssim", "lpips"], channel="rgb")
    assert not psnr.options["test_y_channel"] and not ssim.options["test_y_channel"]
    assert "R, G and B" in psnr.settings and "R, G and B" in ssim.settings
    assert lpips is METRICS["lpips"]


def test_unknown_metric_is_a_config_error_listing_the_known_ones():
    with pytest.raises(ConfigError, match="'psnrr'.*known: psnr, ssim, lpips, dists, fid, niqe, musiq, clipiqa"):
        metric_specs(["psnr", "psnrr"])


@pytest.mark.parametrize("names, channel", [([], "y"), ("psnr", "y"), (["psnr", "psnr"], "y"), (["psnr"], "cb")])
def test_empty_repeated_or_string_names_and_unknown_channels_are_config_errors(names, channel):
    with pytest.raises(ConfigError):
        metric_specs(names, channel=channel)


def test_options_for_a_metric_outside_the_suite_are_a_config_error():
    with pytest.raises(ConfigError, match="musiq"):
        MetricSuite(["psnr"], device="cpu", options={"musiq": TINY_MUSIQ})


def test_settings_give_one_line_per_metric_in_the_suites_order():
    suite = MetricSuite(["ssim", "psnr"], device="cpu", channel="rgb")
    assert list(suite.settings()) == ["ssim", "psnr"]
    assert suite.settings()["psnr"] == metric_specs(["psnr"], channel="rgb")[0].settings


# --- PSNR and SSIM against hand-computed values ------------------------------------------------------------

def test_psnr_of_constant_images_matches_the_formula_on_rgb_and_on_y():
    restored, reference = (0.5, 0.5, 0.5), (0.6, 0.5, 0.45)
    diff = np.subtract(reference, restored)
    mse_rgb = float(np.mean(diff**2))
    mse_y = float((_bt601_y(np.array(reference)) - _bt601_y(np.array(restored))) ** 2)
    images = _constant(restored), _constant(reference)

    rgb = MetricSuite(["psnr"], device="cpu", channel="rgb").score(*images)["psnr"]
    y = MetricSuite(["psnr"], device="cpu").score(*images)["psnr"]

    assert rgb == pytest.approx(10 * math.log10(1 / (mse_rgb + 1e-8)), abs=1e-4)  # 22.04 dB
    assert y == pytest.approx(10 * math.log10(1 / (mse_y + 1e-8)), abs=1e-4)  # 31.49 dB
    assert y != pytest.approx(rgb, abs=1)


def test_ssim_of_identical_images_is_one():
    image = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    assert MetricSuite(["ssim"], device="cpu").score(image, image.clone())["ssim"] == pytest.approx(1, abs=1e-12)


def test_ssim_of_two_flat_images_is_the_luminance_term():
    # Flat images have no variance: SSIM = (2 a b + C1) / (a² + b² + C1), C1 = (0.01 · 255)², a and b in 0..255.
    # (1e-7: pyiqa's Gaussian window is made in float32, so its weights sum to 1 only to about 1e-8.)
    a, b = 100, 110
    images = _constant((a / 255,) * 3), _constant((b / 255,) * 3)
    expected = (2 * a * b + 2.55**2) / (a**2 + b**2 + 2.55**2)
    assert MetricSuite(["ssim"], device="cpu", channel="rgb").score(*images)["ssim"] == pytest.approx(expected, abs=1e-7)


def _rgb_with_luma(y255: np.ndarray, generator: np.random.Generator) -> torch.Tensor:
    """An RGB image in [0, 1] whose BT.601 luma × 255 is the integer array ``y255`` (chroma random, mild):
    the inverse of Y = 16 + 65.481 R + 128.553 G + 24.966 B, Cb/Cr likewise (offset 128)."""
    forward = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]])
    chroma = generator.uniform(118, 138, size=(2, *y255.shape))
    ycbcr = np.stack([y255 - 16, chroma[0] - 128, chroma[1] - 128])
    rgb = np.linalg.solve(forward, ycbcr.reshape(3, -1)).reshape(3, *y255.shape)
    assert rgb.min() >= 0 and rgb.max() <= 1
    return torch.from_numpy(rgb).float()[None]


def test_ssim_on_y_matches_scikit_image_on_the_bt601_luma():
    from skimage.metrics import structural_similarity

    # Integer luma: pyiqa rounds Y × 255 as MATLAB does, and no pixel then sits near a rounding tie.
    generator = np.random.default_rng(1)
    y_reference = generator.integers(40, 200, size=(32, 40)).astype(np.float64)
    y_restored = np.clip(y_reference + generator.integers(-20, 21, size=(32, 40)), 40, 200)
    restored, reference = _rgb_with_luma(y_restored, generator), _rgb_with_luma(y_reference, generator)

    expected = structural_similarity(  # the MATLAB reference SSIM: Gaussian 11×11, σ 1.5, population variances
        y_restored, y_reference, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    )
    assert MetricSuite(["ssim"], device="cpu").score(restored, reference)["ssim"] == pytest.approx(expected, abs=1e-6)


# --- bad input ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("image, problem", [
    (torch.rand(3, 16, 16), r"shape \(1, 3, H, W\)"),
    (torch.rand(2, 3, 16, 16), r"shape \(1, 3, H, W\)"),
    (torch.rand(1, 1, 16, 16), r"shape \(1, 3, H, W\)"),
    (torch.full((1, 3, 16, 16), float("nan")), "NaN"),
    (torch.full((1, 3, 16, 16), 1.5), r"\[0, 1\].*1\.5"),
    (torch.full((1, 3, 16, 16), -0.5), r"\[0, 1\]"),
    (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), "float"),
    (np.zeros((1, 3, 16, 16), dtype=np.float32), "torch.Tensor"),
])
def test_bad_images_are_invalid_input_errors_naming_the_problem(image, problem):
    suite = MetricSuite(["psnr"], device="cpu")
    with pytest.raises(InvalidInputError, match=problem):
        suite.score(image, torch.rand(1, 3, 16, 16))
    with pytest.raises(InvalidInputError, match=problem):
        suite.score(torch.rand(1, 3, 16, 16), image)


def test_images_of_different_sizes_are_an_invalid_input_error():
    with pytest.raises(InvalidInputError, match=r"differ in size: \(16, 16\) vs \(16, 20\)"):
        MetricSuite(["psnr"], device="cpu").score(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 20))


def test_images_smaller_than_the_ssim_window_are_an_invalid_input_error():
    with pytest.raises(InvalidInputError, match="at least 11 pixels"):
        MetricSuite(["ssim"], device="cpu").score(torch.rand(1, 3, 10, 32), torch.rand(1, 3, 10, 32))


def test_a_closed_suite_cannot_score():
    with MetricSuite(["psnr"], device="cpu") as suite:
        pass
    with pytest.raises(ConfigError, match="closed"):
        suite.score(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


# --- weights from pyiqa's cache ----------------------------------------------------------------------------

def test_musiq_scores_with_the_weights_in_pyiqas_cache(tiny_musiq):
    image = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(2))
    score = MetricSuite(["musiq"], device="cpu", options={"musiq": TINY_MUSIQ}).score(image)
    with torch.no_grad():
        assert score == {"musiq": pytest.approx(tiny_musiq(image).item(), abs=1e-6)}


def test_without_reference_full_reference_metrics_are_left_out(tiny_musiq):
    suite = MetricSuite(["psnr", "musiq"], device="cpu", options={"musiq": TINY_MUSIQ})
    image = torch.rand(1, 3, 32, 32)
    assert list(suite.score(image)) == ["musiq"]
    assert list(suite.score(image, image)) == ["psnr", "musiq"]


def test_niqe_scores_with_the_model_parameters_in_pyiqas_cache(hub_dir):
    from pyiqa.archs.niqe_arch import calculate_niqe
    from scipy.io import savemat

    generator = torch.Generator().manual_seed(3)
    mu, cov = torch.rand(36, generator=generator, dtype=torch.float64), torch.eye(36, dtype=torch.float64)
    (hub_dir / "pyiqa").mkdir(parents=True)
    savemat(hub_dir / "pyiqa" / "niqe_modelparameters.mat", {"mu_prisparam": mu[None].numpy(),
                                                              "cov_prisparam": cov.numpy()})
    image = torch.rand(1, 3, 96, 100, generator=generator)

    score = MetricSuite(["niqe"], device="cpu").score(image)["niqe"]

    assert score == pytest.approx(calculate_niqe(image, 0, True, "yiq", mu, cov).item(), abs=1e-9)


@pytest.mark.filterwarnings("ignore:cov\\(\\):UserWarning")  # torch's, on the flat image's one block
def test_niqe_of_a_flat_image_is_a_numerical_error(hub_dir):
    from scipy.io import savemat

    (hub_dir / "pyiqa").mkdir(parents=True)
    savemat(hub_dir / "pyiqa" / "niqe_modelparameters.mat", {"mu_prisparam": np.zeros((1, 36)),
                                                              "cov_prisparam": np.eye(36)})
    suite = MetricSuite(["niqe"], device="cpu")
    with pytest.raises(NumericalError, match="niqe"):
        suite.score(torch.full((1, 3, 96, 96), 0.5))
    with pytest.raises(InvalidInputError, match="at least 96 pixels"):
        suite.score(torch.rand(1, 3, 64, 200))


class _RunsCode:
    """Unpickling this runs ``code``: what a tampered weight file does."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def test_a_weight_file_that_would_run_code_is_refused_and_does_not_run(hub_dir, tmp_path, monkeypatch):
    marker = tmp_path / "code-ran"
    weights = hub_dir / "pyiqa" / MUSIQ_FILE
    weights.parent.mkdir(parents=True)
    torch.save({"params": _RunsCode(f"open({str(marker)!r}, 'w').close()")}, weights)
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)

    with pytest.raises(UnsafeCheckpointError, match=f"Refused to load {weights} for the musiq metric"):
        MetricSuite(["musiq"], device="cpu", options={"musiq": TINY_MUSIQ})

    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # the guard is lifted again
    torch.load(weights, weights_only=False)  # the file is truly hostile: a plain load runs it
    assert marker.exists()


@pytest.mark.parametrize("content, problem", [
    (b"<html>Not Found</html>", "is not a PyTorch checkpoint"),  # an error page saved under the file's name
    (b"PK\x03\x04truncated", "unreadable"),
], ids=["error-page", "truncated"])
def test_a_weight_file_that_is_not_a_checkpoint_is_a_checkpoint_mismatch_naming_it(hub_dir, content, problem):
    weights = hub_dir / "pyiqa" / MUSIQ_FILE
    weights.parent.mkdir(parents=True)
    weights.write_bytes(content)
    with pytest.raises(CheckpointMismatchError, match=problem) as caught:
        MetricSuite(["musiq"], device="cpu", options={"musiq": TINY_MUSIQ})
    assert str(weights) in str(caught.value)


def test_weights_that_do_not_fit_the_network_are_a_checkpoint_mismatch(tiny_musiq):
    with pytest.raises(CheckpointMismatchError, match="musiq.*Missing key"):
        MetricSuite(["musiq"], device="cpu", options={"musiq": {**TINY_MUSIQ, "num_layers": 2}})


def test_options_pyiqa_does_not_take_are_a_config_error(hub_dir):
    with pytest.raises(ConfigError, match="cannot build musiq.*hidden_sise"):
        MetricSuite(["musiq"], device="cpu", options={"musiq": {"hidden_sise": 32}})


# --- offline and online downloads --------------------------------------------------------------------------

@pytest.mark.parametrize("name, folder, file, url", [
    ("musiq", "pyiqa", MUSIQ_FILE, f"{IQA_WEIGHTS}/{MUSIQ_FILE}"),
    ("niqe", "pyiqa", "niqe_modelparameters.mat", f"{IQA_WEIGHTS}/niqe_modelparameters.mat"),
    ("fid", "pyiqa", "pt_inception-2015-12-05-6726825d.pth", f"{IQA_WEIGHTS}/pt_inception-2015-12-05-6726825d.pth"),
    ("lpips", "checkpoints", "alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    ("dists", "checkpoints", "vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
], ids=["musiq", "niqe", "fid", "lpips", "dists"])
def test_a_missing_weight_file_offline_names_the_file_its_url_and_where_it_goes(hub_dir, name, folder, file, url):
    # FID's Inception cannot be made small (pyiqa loads it whole), so its offline error is what is checked;
    # it comes when the suite is created, before any image is restored.
    with pytest.raises(WeightsNotFoundError) as caught:
        MetricSuite([name], device="cpu")
    message = str(caught.value)
    assert f"The {name} metric needs {file}" in message
    assert url in message
    assert f"expected at {hub_dir / folder / file}: put the file there, or run once online" in message
    assert not (hub_dir / folder / file).exists()


def test_clipiqa_without_the_clip_module_is_a_config_error_naming_the_package(hub_dir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "clip", None)  # what an environment without openai-clip looks like
    with pytest.raises(ConfigError, match="clip module.*pip install openai-clip"):
        MetricSuite(["clipiqa"], device="cpu")


@pytest.fixture
def online(monkeypatch) -> list[tuple[str, Path]]:
    """Downloads allowed, but served by a stand-in for elqproj's downloader: returns the (url, target) asked."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("ELQPROJ_OFFLINE", raising=False)
    asked: list[tuple[str, Path]] = []
    monkeypatch.setattr(metrics, "download_url", lambda url, target, **kwargs: asked.append((url, target)))
    return asked


def test_online_a_missing_file_is_downloaded_by_elqproj_to_where_pyiqa_expects_it(hub_dir, online, monkeypatch):
    from pyiqa.archs.musiq_arch import MUSIQ

    def download(url: str, target: Path, **kwargs) -> Path:
        online.append((url, target))
        torch.save(MUSIQ(pretrained=False, **TINY_MUSIQ).state_dict(), target)
        return target

    monkeypatch.setattr(metrics, "download_url", download)
    suite = MetricSuite(["musiq"], device="cpu", options={"musiq": TINY_MUSIQ})
    assert online == [(f"{IQA_WEIGHTS}/{MUSIQ_FILE}", hub_dir / "pyiqa" / MUSIQ_FILE)]
    assert set(suite.score(torch.rand(1, 3, 32, 32))) == {"musiq"}


def test_online_a_failed_download_is_a_weights_not_found_error(hub_dir, online, monkeypatch):
    def unreachable(url: str, target: Path, **kwargs) -> Path:
        raise WeightsNotFoundError(f"Downloading {url} failed: connection refused.")

    monkeypatch.setattr(metrics, "download_url", unreachable)
    with pytest.raises(WeightsNotFoundError, match="connection refused"):
        MetricSuite(["musiq"], device="cpu", options={"musiq": TINY_MUSIQ})


def test_online_a_torchvision_backbone_not_matching_its_hash_prefix_is_refused(hub_dir, online, monkeypatch):
    def substituted(url: str, target: Path, **kwargs) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"not alexnet")
        return target

    monkeypatch.setattr(metrics, "download_url", substituted)
    with pytest.raises(IntegrityError, match="starting with 7be5be79"):
        MetricSuite(["lpips"], device="cpu")
    assert not (hub_dir / "checkpoints" / "alexnet-owt-7be5be79.pth").exists()


# --- sets --------------------------------------------------------------------------------------------------

def test_score_sets_is_empty_for_a_suite_without_set_metrics(tmp_path):
    assert MetricSuite(["psnr"], device="cpu").score_sets(tmp_path, tmp_path) == {}
