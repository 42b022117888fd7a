"""Projector f: creation, save/load round trip (local and Hub cache), push_to_hub plan, project/restore."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from elqproj.value_range import signed_to_unit, unit_to_signed
from PIL import Image
from safetensors.torch import load_file

from elqproj import ConfigError, InvalidInputError, Projector, ProjectorConfig, load_restorer
from elqproj.errors import CheckpointMismatchError, UnknownNameError, WeightsNotFoundError
from elqproj.imageio import pad_to_multiple, to_tensor
from tests.conftest import OSEDIFF_GOLDEN_PKL, SD21_HUB_ID, TINY_SD21, populate_hf_cache


@pytest.fixture(scope="module")
def projector():
    proj = Projector.from_base(TINY_SD21, device="cpu")
    # A trained projector has non-zero LoRA B and its own conv_in: emulate one so round trips are meaningful.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in proj.engine.adapter_parameters(proj.adapter_set):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        conv = proj.engine.override_value(proj.adapter_set, "unet", "conv_in.weight")
        proj.engine.set_override(proj.adapter_set, "unet", "conv_in.weight",
                                 conv + torch.randn(conv.shape, generator=gen) * 0.02)
    return proj


@pytest.fixture(scope="module")
def osediff():
    return load_restorer("osediff", weights=OSEDIFF_GOLDEN_PKL, base_model=TINY_SD21, device="cpu")


def _image(w: int = 37, h: int = 29, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def test_config_round_trips_through_json():
    cfg = ProjectorConfig(base_model="org/base", base_revision="abc", lora_rank=8)
    again = ProjectorConfig.model_validate_json(cfg.model_dump_json())
    assert again == cfg


def test_bad_config_is_a_config_error():
    with pytest.raises(ConfigError, match="lora_rank"):
        Projector.from_base(TINY_SD21, lora_rank=0, device="cpu")


def test_save_and_load_reproduce_the_projection(projector, tmp_path):
    projector.save_pretrained(tmp_path / "p")
    files = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert files == ["README.md", "config.json", "projector.safetensors"]
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert config["base_model"] == str(TINY_SD21) and config["lora_rank"] == 4
    tensors = load_file(str(tmp_path / "p" / "projector.safetensors"))
    assert "unet.conv_in.weight" in tensors and any(".lora_A." in k for k in tensors)
    assert not any("projector_" in k for k in tensors)  # engine-internal adapter names are not saved
    loaded = Projector.from_pretrained(tmp_path / "p", device="cpu")
    x = torch.rand(1, 3, 64, 72, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loaded.project(x, prompt="dog", seed=3), projector.project(x, prompt="dog", seed=3),
                               rtol=0, atol=0)


def test_projector_loads_from_the_hub_cache_with_revision(projector, tmp_path, offline_hub):
    saved = projector.save_pretrained(tmp_path / "p")
    cfg = json.loads((saved / "config.json").read_text())
    cfg["base_model"] = SD21_HUB_ID  # as a published projector records it
    (saved / "config.json").write_text(json.dumps(cfg))
    files = {p.name: p for p in saved.iterdir()}
    populate_hf_cache(offline_hub, "someone/elq-projector", files, commit="a" * 40)
    loaded = Projector.from_pretrained("someone/elq-projector", revision="a" * 40, device="cpu")
    assert loaded.config.base_model == SD21_HUB_ID
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(loaded.project(x, seed=0), projector.project(x, seed=0), rtol=0, atol=0)


def test_missing_projector_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="config.json"):
        Projector.from_pretrained(tmp_path, device="cpu")


def test_a_truncated_weights_file_names_the_file(projector, tmp_path):
    folder = projector.save_pretrained(tmp_path / "p")
    weights = folder / "projector.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointMismatchError, match=r"projector\.safetensors is not a readable safetensors file"):
        Projector.from_pretrained(folder, device="cpu")


def test_projector_of_another_rank_is_refused(projector, tmp_path):
    saved = projector.save_pretrained(tmp_path / "p")
    cfg = json.loads((saved / "config.json").read_text())
    cfg["lora_rank"] = 8
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="wrong shape"):
        Projector.from_pretrained(saved, device="cpu")


class RecordingHubApi:
    """Stands in for huggingface_hub.HfApi: records the upload plan and keeps a copy of the folder."""

    def __init__(self, keep: Path) -> None:
        self.keep = keep
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        shutil.copytree(kwargs["folder_path"], self.keep)
        return "commit-info"


def test_push_to_hub_uploads_a_loadable_folder(projector, tmp_path):
    api = RecordingHubApi(tmp_path / "uploaded")
    assert projector.push_to_hub("me/elq", private=True, api=api) == "commit-info"
    (name, create), (name2, upload) = api.calls
    assert name == "create_repo" and create == {"repo_id": "me/elq", "private": True, "exist_ok": True,
                                                "repo_type": "model"}
    assert name2 == "upload_folder" and upload["repo_id"] == "me/elq" and upload["repo_type"] == "model"
    assert Projector.from_pretrained(tmp_path / "uploaded", device="cpu").config == projector.config


def test_project_keeps_size_and_kind(projector):
    out = projector.project(_image(77, 65), prompt="dog", seed=0)
    assert isinstance(out, Image.Image) and out.size == (77, 65)
    arr = projector.project(np.asarray(_image(70, 64)), seed=0)
    assert isinstance(arr, np.ndarray) and arr.shape == (64, 70, 3) and arr.dtype == np.uint8
    batch = projector.project(torch.rand(2, 3, 64, 64), prompt=["a", "b"], seed=0)
    assert batch.shape == (2, 3, 64, 64) and 0 <= batch.min() and batch.max() <= 1


def test_project_carries_alpha(projector):
    rgba = _image(64, 64).convert("RGBA")
    rgba.putalpha(128)
    out = projector.project(rgba, seed=0)
    assert out.mode == "RGBA" and np.asarray(out)[..., 3].min() == 128


def test_an_image_below_the_models_minimum_is_padded_by_reflection_and_cropped_back(projector):
    small = torch.rand(1, 3, 16, 20)
    assert projector.engine.min_image_side == 64
    out = projector.project(small, seed=0)
    padded, _ = pad_to_multiple(small, 8, min_side=64)  # mirrored at the bottom and right edges
    assert out.shape == small.shape
    assert torch.equal(out, projector.project(padded, seed=0)[..., :16, :20])


def test_prompt_count_must_match_batch(projector):
    with pytest.raises(InvalidInputError, match="list of 2 strings"):
        projector.project(torch.rand(2, 3, 64, 64), prompt=["only one"])


def test_restore_runs_f_then_g_and_reports(projector, osediff, monkeypatch):
    """g receives f's output (not the ELQ input), and the result is g's output of it."""
    seen = {}
    restore_batch = osediff.restore_batch

    def spy(lq, **kwargs):  # OSEDiff's tensor core works in [-1, 1]
        seen["input"] = signed_to_unit(lq)
        seen["output"] = signed_to_unit(restore_batch(lq, **kwargs))
        return unit_to_signed(seen["output"])

    monkeypatch.setattr(osediff, "restore_batch", spy)
    elq = _image(40, 32)
    res = projector.restore(elq, backend=osediff, prompt="dog", seed=0, process_size=64,
                            restorer_options={"color_fix": "none"})
    assert isinstance(res.image, Image.Image) and res.image.size == (80, 64)
    assert isinstance(res.lq, Image.Image) and res.lq.size == (80, 64)
    assert res.prompts == ["dog", "dog"] and res.lfo_passes == 0 and len(res.lq_passes) == 1
    assert set(res.timings) == {"prompt", "project", "restore", "total"}
    g_input = seen["input"][..., :64, :80]
    np.testing.assert_array_equal(_uint8(g_input), np.asarray(res.lq))  # g saw the LQ proxy f made
    enlarged = torch.nn.functional.interpolate(to_tensor(elq)[0], size=(64, 80), mode="bicubic").clamp(0, 1)
    assert (g_input - enlarged).abs().mean() > 0.05  # ... which is not the (enlarged) ELQ input
    np.testing.assert_array_equal(_uint8(seen["output"][..., :64, :80]), np.asarray(res.image))


def _uint8(x: torch.Tensor) -> np.ndarray:
    return (x[0].permute(1, 2, 0).float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def test_restore_with_a_backend_name_loads_it_once(projector):
    a = projector.pipeline("osediff", backend_options={"weights": OSEDIFF_GOLDEN_PKL})
    b = projector.pipeline("OSEDiff", backend_options={"weights": OSEDIFF_GOLDEN_PKL})
    assert a is b and a.projector is projector
    assert a.restorer.engine is projector.engine  # OSEDiff shares the projector's base: one copy of the weights


def test_unknown_backend_lists_the_known_ones(projector):
    with pytest.raises(UnknownNameError, match="osediff"):
        projector.restore(_image(), backend="esrgan9000")
