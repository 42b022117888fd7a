"""The training config: YAML files, defaults from the paper, overrides, and clear errors."""

from __future__ import annotations

import pytest

from elqproj.errors import ConfigError
from elqproj.training import TrainingConfig, load_config
from tests.conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml") if not p.name.startswith("eval_")))
def test_every_shipped_config_is_valid(name):
    """Each training config validates, and every key it sets is a field of the config (nothing silently ignored).
    The eval_*.yaml files are evaluation configs (tests/evaluation/test_evaluate.py loads them)."""
    import yaml

    config = load_config(CONFIGS / name)
    assert isinstance(config, TrainingConfig)
    written = yaml.safe_load((CONFIGS / name).read_text())

    def unknown(data: dict, model, prefix: str = "") -> list[str]:
        found = []
        for key, value in data.items():
            if key not in type(model).model_fields:
                found.append(prefix + key)
            elif isinstance(value, dict) and hasattr(getattr(model, key), "model_fields"):
                found += unknown(value, getattr(model, key), f"{prefix}{key}.")
        return found

    assert unknown(written, config) == []


def test_main_config_has_the_paper_defaults():
    config = load_config(CONFIGS / "irib_osediff.yaml")
    assert config.mode == "irib" and config.restorer.name == "osediff"
    assert config.projector.lora_rank == 4
    assert config.optimizer.learning_rate == 5e-5
    assert config.loss.lambda_blur == 0.5
    assert config.prompts.dropout == 0.3
    assert config.data.crop_size == 512


def test_defaults_without_a_file_are_the_paper_and_osediff_recipe():
    config = load_config(overrides={"data.train": "images"})
    assert (config.projector.lora_rank, config.optimizer.learning_rate, config.loss.lambda_blur,
            config.prompts.dropout, config.data.crop_size) == (4, 5e-5, 0.5, 0.3, 512)
    assert (config.loss.lambda_l2, config.loss.lambda_lpips, config.loss.lambda_vsd, config.loss.cfg_vsd) == (1, 1, 1, 7.5)  # paper, App. A
    assert config.loss.lpips_net == "vgg" and config.loss.vsd_timesteps == (20, 980)


def test_baseline_config_fine_tunes_the_restorer_with_its_own_objective():
    config = load_config(CONFIGS / "baseline_osediff_finetune.yaml")
    assert config.mode == "finetune_restorer"
    assert config.loss.lambda_lq == 0 and config.loss.lambda_blur == 0


def test_command_line_overrides_are_parsed_as_yaml_values():
    config = load_config(CONFIGS / "irib_osediff.yaml",
                         overrides=["training.max_steps=10", "loss.lambda_blur=2", "projector.init_from=null",
                                    "training.log_with=[tensorboard, wandb]"])
    assert config.training.max_steps == 10 and config.loss.lambda_blur == 2.0
    assert config.projector.init_from is None and config.training.log_with == ["tensorboard", "wandb"]


def test_unknown_keys_are_config_errors_naming_the_key():
    with pytest.raises(ConfigError, match="loss.lamda_blur"):
        load_config(CONFIGS / "irib_osediff.yaml", overrides={"loss.lamda_blur": 1.0})


def test_bad_values_are_config_errors_naming_the_field():
    with pytest.raises(ConfigError, match="prompts.dropout"):
        load_config(CONFIGS / "irib_osediff.yaml", overrides={"prompts.dropout": 1.5})
    with pytest.raises(ConfigError, match="vsd_timesteps"):
        load_config(CONFIGS / "irib_osediff.yaml", overrides={"loss.vsd_timesteps": [500, 100]})


def test_data_needs_exactly_one_source():
    with pytest.raises(ConfigError, match="exactly one"):
        load_config(overrides={"data.batch_size": 2})
    with pytest.raises(ConfigError, match="exactly one"):
        load_config(overrides={"data.train": "images", "data.hf_dataset": {"path": "org/images"}})


def test_fixed_prompts_need_their_text():
    with pytest.raises(ConfigError, match="prompts.text"):
        load_config(overrides={"data.train": "images", "prompts.extractor": "fixed"})


def test_the_baseline_only_fine_tunes_osediff():
    with pytest.raises(ConfigError, match="restorer.name must be 'osediff'"):
        load_config(overrides={"data.train": "images", "mode": "finetune_restorer", "restorer.name": "s3diff"})


def test_malformed_overrides_and_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(CONFIGS / "irib_osediff.yaml", overrides=["training.max_steps"])
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="Cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_config_round_trips_through_yaml(tmp_path):
    config = load_config(CONFIGS / "irib_tiny_cpu.yaml")
    (tmp_path / "again.yaml").write_text(config.to_yaml())
    assert load_config(tmp_path / "again.yaml") == config
