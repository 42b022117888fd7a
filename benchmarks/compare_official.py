"""Ours side by side with the official code, on the same machine and torch: two parts.

    python benchmarks/compare_official.py                                   # degradations (the default part)
    python benchmarks/compare_official.py degradations --batch-sizes 1 --rounds 9 --threads 2
    python benchmarks/compare_official.py osediff --sizes 256 512 --rounds 10
    python benchmarks/compare_official.py osediff --official-dir PATH       # an extracted copy, no download

``osediff``: OSEDiff inference against the official ``OSEDiff_test`` on one random full-size checkpoint, CPU,
fp32 (see ``official_osediff.py`` beside this file). It exits with status 2 and says why when the official
code cannot be downloaded (offline) and no ``--official-dir`` is given.

``degradations``: our degradation engine against the official Real-ESRGAN code.

The official code is BasicSR 1.4.2 (``filter2D``, ``USMSharp``, ``DiffJPEG``, the noise functions) and
Real-ESRGAN 0.3.0 (``RealESRGANModel.feed_data``, the second-order degradation as its training runs it),
fetched from PyPI at benchmark time into ``--official-dir`` (default ``~/.cache/elqproj-bench/official``)
and run in its own process, unmodified; only two imports are bridged: torchvision's removed
``functional_tensor`` module (its ``rgb_to_grayscale`` lives in ``torchvision.transforms.functional``) and the
training classes ``feed_data`` does not use (a bare base class for ``SRGANModel``, no CUDA ``__init__``; its
training pair pool is allocated on the CPU, where ``feed_data`` would allocate it on CUDA).
Nothing of it is kept in this repository.

Both sides get the same HQ batches and the same blur / sinc kernels (ours sampled by
``DegradationPipeline("realesrgan")``; the official side receives them zero-padded to 21², as its dataset
pads them); each side draws its own resize, noise and JPEG choices from the same distributions.
``feed_data`` also sharpens the GT once more for its training target, so ours times ``apply`` plus that
``usm_sharpen`` of the GT. The sides alternate, one process per side and round, after a warm-up batch; the
table gives images/s and the ratio ours/official per round and their medians, and ours against the
official code at its best batch size that ran (on the CPU its ``filter2D`` fails at batch 8: it ``.view``s a
tensor that the CPU's interpolation leaves non-contiguous; the error is printed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tarfile
import time
import types
import zipfile
from pathlib import Path

import official_osediff  # same folder

OFFICIAL_PACKAGES = ("basicsr==1.4.2", "realesrgan==0.3.0")


def fetch_official(root: Path) -> tuple[Path, Path]:
    """The official ``basicsr`` and ``realesrgan`` package folders under ``root``, downloaded from PyPI once."""
    basicsr, realesrgan = root / "basicsr-1.4.2" / "basicsr", root / "realesrgan"
    if not (basicsr.is_dir() and realesrgan.is_dir()):
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(root),
                        *OFFICIAL_PACKAGES], check=True)
        with tarfile.open(next(root.glob("basicsr-1.4.2.tar.gz"))) as archive:
            archive.extractall(root, filter="data")
        with zipfile.ZipFile(next(root.glob("realesrgan-0.3.0-*.whl"))) as wheel:
            wheel.extractall(root)
    return basicsr, realesrgan


def _package(name: str, path: Path | None = None) -> types.ModuleType:
    """An importable package ``name`` whose submodules load from ``path``, without running its __init__."""
    module = types.ModuleType(name)
    module.__path__ = [str(path)] if path else []
    sys.modules[name] = module
    return module


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def official_model(root: Path, opt: dict):
    """``RealESRGANModel`` as its training builds it for ``feed_data``, from the unmodified official files."""
    import torch
    import torchvision.transforms.functional as functional

    basicsr, realesrgan = fetch_official(root)
    sys.modules["torchvision.transforms.functional_tensor"] = functional  # removed in torchvision 0.17
    _package("basicsr", basicsr)
    for sub in ("data", "utils", "models"):
        _package(f"basicsr.{sub}", basicsr / sub)
    _load("basicsr.data.degradations", basicsr / "data" / "degradations.py")
    _load("basicsr.data.transforms", basicsr / "data" / "transforms.py")
    process = _load("basicsr.utils.img_process_util", basicsr / "utils" / "img_process_util.py")
    jpeg = _load("basicsr.utils.diffjpeg", basicsr / "utils" / "diffjpeg.py")
    _load("basicsr.utils.registry", basicsr / "utils" / "registry.py")
    sys.modules["basicsr.utils"].DiffJPEG, sys.modules["basicsr.utils"].USMSharp = jpeg.DiffJPEG, process.USMSharp
    srgan = types.ModuleType("basicsr.models.srgan_model")
    srgan.SRGANModel = type("SRGANModel", (), {})  # the training base class: nothing feed_data uses
    sys.modules["basicsr.models.srgan_model"] = srgan
    _package("realesrgan", realesrgan)
    _package("realesrgan.models", realesrgan / "models")
    model_class = _load("realesrgan.models.realesrgan_model", realesrgan / "models" / "realesrgan_model.py").RealESRGANModel
    model = object.__new__(model_class)  # its __init__ builds the training networks on CUDA
    model.opt, model.is_train, model.device = opt, True, torch.device("cpu")
    model.jpeger, model.usm_sharpener = jpeg.DiffJPEG(differentiable=False), process.USMSharp()
    # the training pair pool, allocated where feed_data would put it on CUDA (the pool is part of its cost)
    channels, size, scale = 3, opt["gt_size"], opt["scale"]
    model.queue_size, model.queue_ptr = opt["queue_size"], 0
    model.queue_lr = torch.zeros(model.queue_size, channels, size // scale, size // scale)
    model.queue_gt = torch.zeros(model.queue_size, channels, size, size)
    return model


def realesrgan_opt(config, size: int, batch: int) -> dict:
    """The Real-ESRGAN x4plus training options of ``feed_data``, read from our ``realesrgan`` preset."""
    def resize(stage):
        return [stage.resize.probs["up"], stage.resize.probs["down"], stage.resize.probs["keep"]]

    s1, s2 = config.stage1, config.stage2
    return {"resize_prob": resize(s1), "resize_range": list(s1.resize.range), "gaussian_noise_prob": s1.noise.gaussian_prob,
            "noise_range": list(s1.noise.sigma_range), "poisson_scale_range": list(s1.noise.poisson_scale_range),
            "gray_noise_prob": s1.noise.gray_prob, "jpeg_range": list(s1.jpeg_range),
            "second_blur_prob": config.second_blur_prob, "resize_prob2": resize(s2), "resize_range2": list(s2.resize.range),
            "gaussian_noise_prob2": s2.noise.gaussian_prob, "noise_range2": list(s2.noise.sigma_range),
            "poisson_scale_range2": list(s2.noise.poisson_scale_range), "gray_noise_prob2": s2.noise.gray_prob,
            "jpeg_range2": list(s2.jpeg_range), "scale": config.final_scale[0], "gt_size": size,
            "queue_size": 20 * batch}


def run_side(args: argparse.Namespace) -> None:
    """One side, one round, in this process: prints ``{"images_per_s": ...}``."""
    import random

    import numpy as np
    import torch
    import torch.nn.functional as F

    from elqproj.degradations import DegradationPipeline
    from elqproj.degradations.filtering import usm_sharpen
    from elqproj.degradations.kernels import stack_kernels

    torch.set_num_threads(args.threads)
    pipeline = DegradationPipeline("realesrgan")
    generator = torch.Generator().manual_seed(args.seed)
    batches = [(torch.rand(args.batch, 3, args.size, args.size, generator=generator),
                pipeline.sample(args.batch, generator)) for _ in range(args.batches + 1)]
    if args.side == "ours":
        def step(hq, params):
            pipeline.apply(hq, params)
            usm_sharpen(hq)  # the official feed_data's second USM: its training target
    else:
        random.seed(args.seed)
        np.random.seed(args.seed)
        model = official_model(args.official_dir, realesrgan_opt(pipeline.config, args.size, args.batch))

        def padded(kernels):
            stacked = stack_kernels(kernels)
            margin = (21 - stacked.shape[-1]) // 2
            return F.pad(stacked, [margin] * 4)

        def pulse():
            kernel = torch.zeros(args.batch, 21, 21)
            kernel[:, 10, 10] = 1
            return kernel

        def step(hq, params):
            blur2 = padded(params.blur2) if params.blur2 else pulse()
            sinc = padded(params.final_sinc) if params.final_sinc else pulse()
            model.feed_data({"gt": hq, "kernel1": padded(params.blur1), "kernel2": blur2, "sinc_kernel": sinc})
    step(*batches[0])  # warm-up
    start = time.perf_counter()
    for hq, params in batches[1:]:
        step(hq, params)
    seconds = time.perf_counter() - start
    print(json.dumps({"images_per_s": args.batches * args.batch / seconds}))


PARTS = ("degradations", "osediff")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The part (``degradations`` when none is named, as before parts existed) and its options."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in PARTS and argv[0] not in ("-h", "--help")):
        argv = ["degradations", *argv]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = parser.add_subparsers(dest="part", metavar="{degradations,osediff}")
    degradations = parts.add_parser("degradations", help="the degradation engine against Real-ESRGAN's (default)")
    degradations.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    degradations.add_argument("--images", type=int, default=16, help="images timed per side and round (default 16)")
    degradations.add_argument("--size", type=int, default=512, help="HQ side (px); the LQ is a quarter of it")
    degradations.add_argument("--rounds", type=int, default=5)
    degradations.add_argument("--threads", type=int, default=2)
    degradations.add_argument("--seed", type=int, default=0)
    degradations.add_argument("--official-dir", type=Path, default=Path.home() / ".cache" / "elqproj-bench" / "official")
    degradations.add_argument("--side", choices=["ours", "official"], help=argparse.SUPPRESS)
    degradations.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    degradations.add_argument("--batches", type=int, help=argparse.SUPPRESS)
    osediff = parts.add_parser("osediff", help="OSEDiff inference against the official OSEDiff_test (CPU, fp32)",
                               description=official_osediff.__doc__.split("\n\n")[0])
    official_osediff.add_arguments(osediff)
    args = parser.parse_args(argv)
    if args.part == "osediff":
        official_osediff.check_arguments(osediff, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    if args.part == "osediff":
        try:
            official_osediff.run(args)
        except official_osediff.OfficialUnavailable as exc:
            print(f"compare_official.py osediff: {exc}", file=sys.stderr)
            return 2
        return 0
    compare_degradations(args)
    return 0


def compare_degradations(args: argparse.Namespace) -> None:
    if args.side:
        run_side(args)
        return
    fetch_official(args.official_dir)
    best_official = 0.0
    for batch in args.batch_sizes:
        rates: dict[str, list[float]] = {"ours": [], "official": []}
        failure = None
        for round_ in range(args.rounds):
            for side in ("official", "ours"):
                if side == "official" and failure:
                    continue
                command = [sys.executable, __file__, "degradations", "--side", side, "--batch", str(batch),
                           "--size", str(args.size), "--batches", str(max(1, args.images // batch)), "--threads", str(args.threads),
                           "--seed", str(args.seed + round_), "--official-dir", str(args.official_dir)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode:
                    if side == "ours":
                        raise RuntimeError(done.stderr)
                    failure = done.stderr.strip().splitlines()[-1]  # the official code cannot run this batch
                    continue
                rates[side].append(json.loads(done.stdout.strip().splitlines()[-1])["images_per_s"])
        row = {"batch": batch, "size": args.size, "threads": args.threads, "rounds": args.rounds,
               "official_images_per_s": [round(r, 3) for r in rates["official"]],
               "ours_images_per_s": [round(r, 3) for r in rates["ours"]]}
        if failure:
            row["official_error"] = failure
        else:
            ratios = [ours / official for ours, official in zip(rates["ours"], rates["official"])]
            row |= {"ratio_per_round": [round(r, 2) for r in ratios], "median_ratio": round(statistics.median(ratios), 2)}
            best_official = max(best_official, statistics.median(rates["official"]))
        if best_official:  # against the official code at its best batch that ran
            row["median_vs_official_best_batch"] = round(statistics.median(rates["ours"]) / best_official, 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    sys.exit(main())
