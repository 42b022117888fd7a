"""The trainer on the tiny fixtures: what a step updates, overfitting, checkpoints, resume, the
restorer baseline and the command line."""

from __future__ import annotations

import pytest
import torch

from elqproj import Projector, load_restorer
from elqproj.cli import main as cli_main
from elqproj.errors import ConfigError
from elqproj.training import IRIBTrainer
from elqproj.training.checkpoints import REGULARIZER_WEIGHTS, RESTORER_WEIGHTS, read_trainer_state
from tests.conftest import OSEDIFF_GOLDEN_PKL, TINY_SD21, golden_set
from tests.training.conftest import TINY_CONFIG, tiny_config


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, train_images):
    return IRIBTrainer(tiny_config(tmp_path_factory.mktemp("run"), train_images))


@pytest.fixture(scope="module")
def batch(trainer):
    return next(iter(trainer.train_loader))


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    after = module.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_a_step_updates_only_the_projector_and_the_regulariser_lora(trainer, batch):
    trainer.evaluate(batch, torch.Generator().manual_seed(0))  # puts every engine's adapter set in place
    f, g, prior = (_state(m) for m in (trainer.student.engine, trainer.restorer.engine, trainer.regularizer.unet))
    trainer.training_step(batch)
    assert _changed(f, trainer.student.engine) == (
        {k for k in f if ".lora_" in k} | {"unet.conv_in.base_layer.weight", "unet.conv_in.base_layer.bias"})
    assert _changed(g, trainer.restorer.engine) == set()
    assert not any(p.requires_grad or p.grad is not None for p in trainer.restorer.parameters())
    assert _changed(prior, trainer.regularizer.unet) == {k for k in prior if ".vsd_regularizer." in k}


def test_gradient_checkpointing_gives_the_same_gradients_to_every_trained_tensor(tmp_path, train_images):
    trainer = IRIBTrainer(tiny_config(tmp_path, train_images))
    batch = next(iter(trainer.train_loader))

    def gradients(checkpointing: bool) -> list[torch.Tensor]:
        trainer.set_gradient_checkpointing(checkpointing)
        trainer.compute_losses(batch, torch.Generator().manual_seed(0)).total.backward()
        grads = [p.grad.clone() for p in trainer.student_parameters]
        trainer.student.zero_grad(set_to_none=True)
        return grads

    plain, checkpointed = gradients(False), gradients(True)
    names = {id(p): n for n, p in trainer.student.engine.named_parameters()}
    names = [names[id(p)] for p in trainer.student_parameters]
    reached = {n for n, g in zip(names, plain) if g.abs().sum() > 0}
    # LoRA starts with B = 0, so only B (and conv_in) get gradients at first — in the UNet and in the VAE
    # encoder, whose own input needs no gradient (a reentrant checkpoint would silently drop those).
    assert reached == {n for n in names if ".lora_A." not in n}
    assert any(n.startswith("vae.encoder.") for n in reached)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)


def test_s3diff_as_g_passes_gradients_to_the_projector_only(tmp_path, train_images):
    s3diff = golden_set("s3diff")
    trainer = IRIBTrainer(tiny_config(tmp_path, train_images, **{
        "restorer.name": "s3diff", "restorer.weights": str(s3diff / "s3diff.pkl"),
        "restorer.base_model": str(TINY_SD21), "restorer.options": {"de_net": str(s3diff / "de_net.pth")}}))
    batch = next(iter(trainer.train_loader))
    trainer.evaluate(batch, torch.Generator().manual_seed(0))
    f, g = _state(trainer.student.engine), _state(trainer.restorer)
    trainer.training_step(batch)
    assert _changed(f, trainer.student.engine) == (
        {k for k in f if ".lora_" in k} | {"unet.conv_in.base_layer.weight", "unet.conv_in.base_layer.bias"})
    assert _changed(g, trainer.restorer) == set()  # its engine, modulator and degradation estimator
    assert not any(p.requires_grad or p.grad is not None for p in trainer.restorer.parameters())


def test_overfitting_one_fixed_batch_lowers_the_total_loss(tmp_path, train_images):
    # VSD's gradient is a score-distillation direction, not the gradient of its (tiny) value; at full
    # weight it dominates f's update on random networks. A small weight keeps the term in the loop while
    # the fidelity terms lead, so fitting the batch must lower the total.
    trainer = IRIBTrainer(tiny_config(tmp_path, train_images, **{"loss.lambda_vsd": 0.01,
                                                                  "optimizer.learning_rate": 1e-4}))
    batch = next(iter(trainer.train_loader))
    draws = 7  # the same random draws (prompt dropout, posterior noise, VSD noise) at every evaluation
    before = trainer.evaluate(batch, torch.Generator().manual_seed(draws))["total"]
    for _ in range(3):
        trainer.training_step(batch, torch.Generator().manual_seed(draws))
    after = trainer.evaluate(batch, torch.Generator().manual_seed(draws))["total"]
    assert after < 0.97 * before


def test_a_checkpoint_is_a_projector_directory_with_the_trained_weights(trainer, batch):
    trainer.training_step(batch)
    path = trainer.save_checkpoint()
    assert path.name == f"checkpoint-{trainer.global_step}"
    assert (path / REGULARIZER_WEIGHTS).is_file() and read_trainer_state(path)["global_step"] == trainer.global_step
    loaded = Projector.from_pretrained(path, shared=False)
    x = batch["elq"] * 2 - 1
    embeds = loaded.encode_prompt(["a photo"])
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trainer.student(x, embeds, encoder_noise=noise).image
        assert torch.allclose(loaded(x, embeds, encoder_noise=noise).image, expected, atol=1e-6)


def test_resume_continues_the_step_count_and_the_optimizer_state(tmp_path, train_images):
    first = IRIBTrainer(tiny_config(tmp_path, train_images, **{"training.max_steps": 1}))
    assert first.train() == tmp_path / "checkpoint-1"
    resumed = IRIBTrainer(tiny_config(tmp_path, train_images, **{"training.max_steps": 2}), resume="latest")
    assert resumed.global_step == 1
    for old, new in ((first.optimizer, resumed.optimizer), (first.regularizer_optimizer, resumed.regularizer_optimizer)):
        old_state, new_state = old.state_dict()["state"], new.state_dict()["state"]
        assert old_state.keys() == new_state.keys() and len(old_state) > 0
        for index in old_state:
            for key in ("step", "exp_avg", "exp_avg_sq"):
                assert torch.equal(old_state[index][key], new_state[index][key])
    assert resumed.lr_scheduler.state_dict()["last_epoch"] == first.lr_scheduler.state_dict()["last_epoch"]
    for old, new in zip(first.student_parameters, resumed.student_parameters):
        assert torch.equal(old, new)
    assert resumed.train() == tmp_path / "checkpoint-2"
    assert read_trainer_state(tmp_path / "checkpoint-2")["global_step"] == 2


def test_gradient_accumulation_updates_once_per_accumulated_batches(tmp_path, train_images):
    trainer = IRIBTrainer(tiny_config(tmp_path, train_images, **{
        "training.gradient_accumulation_steps": 2, "training.max_steps": 1, "training.num_validation_images": 0}))
    micro_batches = []
    step = trainer.training_step
    trainer.training_step = lambda batch, generator=None: micro_batches.append(1) or step(batch, generator)
    trainer.train()
    assert (len(micro_batches), trainer.global_step) == (2, 1)
    for optimizer in (trainer.optimizer, trainer.regularizer_optimizer):
        steps = {float(state["step"]) for state in optimizer.state_dict()["state"].values()}
        assert steps == {1.0}
    assert trainer.lr_scheduler.state_dict()["last_epoch"] == 1


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state whose mixed precision is fixed at first use: start and end
    with none (what accelerate's own test cases do between tests)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_mixed_precision_keeps_frozen_weights_in_bf16_and_trains_in_float32(
        tmp_path, train_images, fresh_accelerate_state):
    trainer = IRIBTrainer(tiny_config(tmp_path, train_images, **{"training.mixed_precision": "bf16"}))
    trained = {id(p) for p in [*trainer.student_parameters, *trainer.regularizer.lora_parameters()]}
    assert all(p.dtype == torch.float32 for p in [*trainer.student_parameters, *trainer.regularizer.lora_parameters()])
    for network in (trainer.student.engine, trainer.restorer.engine, trainer.regularizer.unet):
        frozen = [p for p in network.parameters() if id(p) not in trained]
        assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)


def test_fp16_mixed_precision_on_the_cpu_is_a_config_error(tmp_path, train_images, fresh_accelerate_state):
    with pytest.raises(ConfigError, match="'fp16' needs a CUDA GPU; use 'bf16'"):
        IRIBTrainer(tiny_config(tmp_path, train_images, **{"training.mixed_precision": "fp16"}))


def test_changing_the_mixed_precision_within_one_process_is_a_config_error(tmp_path, train_images):
    IRIBTrainer(tiny_config(tmp_path / "a", train_images))
    with pytest.raises(ConfigError, match="new Python process"):
        IRIBTrainer(tiny_config(tmp_path / "b", train_images, **{"training.mixed_precision": "bf16"}))


def test_the_baseline_fine_tunes_osediff_and_saves_an_osediff_checkpoint(tmp_path, train_images):
    trainer = IRIBTrainer(tiny_config(tmp_path, train_images, mode="finetune_restorer",
                                      **{"loss.lambda_lq": 0.0, "loss.lambda_blur": 0.0}))
    assert trainer.restorer is None
    batch = next(iter(trainer.train_loader))
    trainer.training_step(batch)
    path = trainer.save_checkpoint() / RESTORER_WEIGHTS
    tuned = load_restorer("osediff", weights=path, base_model=TINY_SD21, device="cpu")
    original = load_restorer("osediff", weights=OSEDIFF_GOLDEN_PKL, base_model=TINY_SD21, device="cpu")
    x = batch["elq"] * 2 - 1
    embeds = tuned.encode_prompt(["a photo"])
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trainer.student(x, embeds, encoder_noise=noise).image
        assert torch.allclose(tuned(x, embeds, encoder_noise=noise).image, expected, atol=1e-6)
        assert not torch.allclose(original(x, embeds, encoder_noise=noise).image, expected, atol=1e-4)


def test_elqproj_train_runs_the_example_config_end_to_end(tmp_path, train_images, capsys):
    overrides = {"output_dir": tmp_path, "base_model": TINY_SD21, "restorer.weights": OSEDIFF_GOLDEN_PKL,
                 "data.train": train_images, "training.max_steps": 1}
    argv = ["train", "--config", str(TINY_CONFIG)] + [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    assert cli_main(argv) == 0
    final = tmp_path / "checkpoint-1"
    assert capsys.readouterr().out.strip().endswith(str(final))
    Projector.from_pretrained(final, shared=False)
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*")), "tensorboard wrote no event file"
    assert (tmp_path / "validation" / "step-0000001.png").is_file()
    assert (tmp_path / "training_config.yaml").is_file()


def test_a_multistep_restorer_cannot_be_trained_through(tmp_path, train_images):
    with pytest.raises(ConfigError, match="no differentiable one-step forward"):
        IRIBTrainer(tiny_config(tmp_path, train_images, **{"restorer.name": "seesr"}))


def test_a_non_finite_loss_stops_training_before_any_update(tmp_path, train_images, monkeypatch):
    from elqproj import NumericalError

    trainer = IRIBTrainer(tiny_config(tmp_path, train_images))
    batch = next(iter(trainer.train_loader))
    monkeypatch.setattr(trainer.regularizer, "pretrained_x0", lambda noisy, *a, **k: torch.full_like(noisy, float("nan")))
    before = [p.detach().clone() for p in trainer.student_parameters]
    with pytest.raises(NumericalError, match=r"step 1 \(non-finite terms: vsd\); no update was made"):
        trainer.training_step(batch)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.student_parameters))


def test_a_tracker_whose_package_is_missing_is_a_config_error(tmp_path, train_images, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    with pytest.raises(ConfigError, match="pip install wandb"):
        IRIBTrainer(tiny_config(tmp_path, train_images, **{"training.log_with": ["tensorboard", "wandb"]}))


def test_too_few_images_for_a_batch_is_a_config_error(tmp_path, train_images):
    with pytest.raises(ConfigError, match="no full batch"):
        IRIBTrainer(tiny_config(tmp_path, train_images, **{"data.batch_size": 3}))


def test_validation_logs_the_evaluation_metrics_of_the_restored_batch(trainer, monkeypatch):
    logged = {}
    monkeypatch.setattr(trainer.accelerator, "log", lambda values, step: logged.update(values))
    scored = []
    real_score = trainer.validation_metrics.score
    monkeypatch.setattr(trainer.validation_metrics, "score", lambda x, ref: scored.append(real_score(x, ref)) or scored[-1])
    trainer.validate()
    assert set(logged) == {"validation/psnr", "validation/ssim"}
    assert len(scored) == trainer.validation_batch["hq"].shape[0]
    assert logged["validation/psnr"] == pytest.approx(sum(s["psnr"] for s in scored) / len(scored))


def test_a_set_metric_cannot_be_a_validation_metric(tmp_path, train_images):
    with pytest.raises(ConfigError, match="fid compares whole sets"):
        tiny_config(tmp_path, train_images, **{"training.validation_metrics": ["psnr", "fid"]})
