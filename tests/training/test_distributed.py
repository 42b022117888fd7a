"""Two CPU processes (gloo) under ``accelerate launch`` complete a training step together."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from elqproj.training.checkpoints import read_trainer_state
from tests.conftest import OSEDIFF_GOLDEN_PKL, REPO_ROOT, TINY_SD21
from tests.training.conftest import TINY_CONFIG


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_cpu_processes_complete_one_step(tmp_path, train_images):
    overrides = {"output_dir": tmp_path, "base_model": TINY_SD21, "restorer.weights": OSEDIFF_GOLDEN_PKL,
                 "data.train": train_images, "training.max_steps": 1, "training.log_with": "[]",
                 "training.num_validation_images": 0}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        "-m", "elqproj.training", "--config", str(TINY_CONFIG),
    ] + [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    # ACCELERATE_USE_CPU turns the multi-process launch into DDP over gloo on the CPU.
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    checkpoint = tmp_path / "checkpoint-1"
    assert read_trainer_state(checkpoint)["global_step"] == 1
    # every process saved its RNG state: both took part in the step
    assert sorted(p.name for p in checkpoint.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]
    assert "on 2 process(es) (MULTI_CPU" in result.stderr
