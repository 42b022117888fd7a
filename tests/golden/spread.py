"""Measure how far our golden-parity results move with torch's thread count, and how far from the official.

Float32 reductions (matrix products, convolutions, norms) sum in an order that depends on the number of
threads, so the same code gives slightly different numbers at 1, 2, 4 … threads. A golden tolerance must
cover that spread, and a gap to the official result may only be blamed on it when the gap lies within it.
This command measures both, for every tensor the golden tests compare::

    python -m tests.golden.spread seesr s3diff osediff --threads 1 2 3 4 8 --repeats 2

Each (thread count, repeat) runs in a fresh process. For every compared tensor it prints
``official``: the largest |ours − official| over all runs, and ``spread``: the largest |ours_i − ours_j|
between any two runs (uint8 images: in levels). Where a collector can, it also evaluates a tensor in
float64 (``<name>@fp64``): then ``official`` is |exact − official|, the official float32 result's own
rounding error. The tolerances in tests/golden quote this command's output.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

Pairs = dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (ours, official)


def _seesr() -> Pairs:
    from . import test_seesr_golden as g

    restorer = g.load_restorer("seesr", weights=g.GOLDEN / "seesr", base_model=g.TINY_SD21, device="cpu")
    pairs: Pairs = {}
    for case in g.CASES:
        _, steps = g._restore(restorer, case, "none", inject_initial_noise=True)
        for step in steps:
            for name, ours in (("noise_pred_cfg", step.noise_pred), ("latents_out", step.latents)):
                key = f"step{step.index}_{name}"
                pairs[f"{case}/{key} (chained)"] = (ours, g._tensor(case, key))
            eps = g.noise_pred_from_recorded_input(restorer, case, step.index)
            key = f"step{step.index}_noise_pred_cfg"
            pairs[f"{case}/{key} (from recorded input)"] = (eps, g._tensor(case, key))
        for fix in ["none", *g._color_fixes(case)]:
            image, _ = g._restore(restorer, case, fix, inject_initial_noise=False)
            recorded = "pipeline_output_uint8_hwc" if fix == "none" else f"final_{fix}_uint8_hwc"
            pairs[f"{case}/{recorded}"] = (torch.from_numpy(g.np.asarray(image).copy()), g._tensor(case, recorded))
    return pairs


def _s3diff() -> Pairs:
    from elqproj.tiling import TilingConfig

    from . import test_s3diff_golden as g

    restorer = g.load_restorer("s3diff", weights=g.GOLDEN / "s3diff.pkl", de_net=g.GOLDEN / "de_net.pth",
                               base_model=g.TINY_SD21, device="cpu")
    pairs: Pairs = {}

    def unet_predictions(dtype: torch.dtype, suffix: str) -> None:
        for case in g.CASES:
            recorded = g._recorded(case)
            tiles = g.recorded_unet_inputs(restorer, case)
            batch = tiles[0].shape[0]
            with torch.no_grad(), restorer.conditioned(g._scores(restorer, case).to(dtype)):
                for name, text in (("unet_pred_pos", "pos_text_hidden"), ("unet_pred_neg", "neg_text_hidden")):
                    embeds = g._recorded_text(text).expand(batch, -1, -1).to(dtype)
                    preds = [restorer.engine.predict_noise(t.to(dtype), embeds, tiling=TilingConfig(mode="never"))
                             for t in tiles]
                    ours = torch.stack(preds) if recorded[name].ndim == 5 else preds[0]
                    pairs[f"{case}/{name}{suffix}"] = (ours.double(), recorded[name])

    unet_predictions(torch.float32, "")
    for case in g.CASES:
        recorded = g._recorded(case)
        out, _, _ = g._model_run(restorer, case)
        h = g._inputs(case)["lq"].shape[-2] * g.INFO["scale_factor"]
        w = g._inputs(case)["lq"].shape[-1] * g.INFO["scale_factor"]
        for name, ours in (("model_pred_cfg", out.model_pred), ("x_denoised", out.x0),
                           ("sr_output", out.image[..., :h, :w])):
            if name in recorded:
                pairs[f"{case}/{name}"] = (ours, recorded[name])
    for case, fix in g.IMAGE_OUTPUTS:
        pairs[f"{case}/out_uint8_{fix}"] = (torch.from_numpy(g.pil_pipeline_output(restorer, case, fix).copy()),
                                            g.TENSORS[f"{case}/out_uint8_{fix}"])
    restorer.engine.unet.double()
    restorer.modulator.double()
    unet_predictions(torch.float64, "@fp64")
    return pairs


def _osediff() -> Pairs:
    from . import test_osediff_golden as g

    restorer = g.load_restorer("osediff", weights=g.GOLDEN / "osediff.pkl", base_model=g.TINY_SD21, device="cpu")
    pairs: Pairs = {}
    for case in g.CASES:
        for name, (ours, official) in g.intermediates(restorer, case).items():
            pairs[f"{case}.{name}"] = (ours, official)
        for fix in g.COLOR_FIXES:
            pairs[f"{case}.output_{fix}_uint8"] = (torch.from_numpy(g.pil_pipeline_output(restorer, case, fix).copy()),
                                                   g.TENSORS[f"{case}.output_{fix}_uint8"].permute(1, 2, 0))
    return pairs


COLLECTORS: dict[str, Callable[[], Pairs]] = {"seesr": _seesr, "s3diff": _s3diff, "osediff": _osediff}


def _worker(name: str, threads: int, out: Path) -> None:
    from safetensors.torch import save_file

    import tests.conftest  # noqa: F401  (offline Hub, shared paths; sets a default thread count)

    torch.set_num_threads(threads)
    pairs = COLLECTORS[name]()
    tensors = {}
    for key, (ours, official) in pairs.items():
        tensors[f"ours|{key}"] = ours.detach().clone().contiguous()
        tensors[f"official|{key}"] = official.detach().clone().contiguous()
    save_file(tensors, str(out))


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if not a.is_floating_point():
        return (a.to(torch.int32) - b.to(torch.int32)).abs().max().item()
    return (a.double() - b.double()).abs().max().item()


def measure(name: str, threads: list[int], repeats: int) -> list[tuple[str, float, float]]:
    """Run ``name``'s collector at each thread count ``repeats`` times; per tensor (name, official, spread)."""
    from safetensors.torch import load_file

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for count, repeat in itertools.product(threads, range(repeats)):
            out = Path(tmp) / f"{count}_{repeat}.safetensors"
            subprocess.run([sys.executable, "-m", "tests.golden.spread", "--worker", name, str(count), str(out)],
                           check=True)
            runs.append(load_file(str(out)))
    keys = [k.split("|", 1)[1] for k in runs[0] if k.startswith("ours|")]
    rows = []
    for key in keys:
        official = max(_diff(run[f"ours|{key}"], run[f"official|{key}"]) for run in runs)
        spread = max((_diff(a[f"ours|{key}"], b[f"ours|{key}"]) for a, b in itertools.combinations(runs, 2)),
                     default=0.0)
        rows.append((key, official, spread))
    return rows


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        _worker(argv[1], int(argv[2]), Path(argv[3]))
        return
    parser = argparse.ArgumentParser(prog="python -m tests.golden.spread", description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="+", choices=sorted(COLLECTORS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2, 3, 4, 8])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}; threads {args.threads}; {args.repeats} run(s) each")
    for name in args.sets:
        rows = measure(name, args.threads, args.repeats)
        width = max(len(r[0]) for r in rows)
        print(f"\n{name}\n{'tensor':<{width}}  {'official':>9}  {'spread':>9}")
        for key, official, spread in rows:
            print(f"{key:<{width}}  {official:9.3g}  {spread:9.3g}")


if __name__ == "__main__":
    main()
