"""The GPU suite: every measurement the speed issue asks for, in one run on a lent GPU, as one table.

Random full-size weights built by the sibling benchmark scripts (no download): g alone for every backend
(OSEDiff-shaped on an SD2.1 base, SeeSR at its official 50 steps with CFG, S3Diff), f + g with LFO 0 and
2, latent/VAE tiling on a 4096² image, one IRIB training step at batch 1 and 2 with gradient
checkpointing on and off (``bench_train.py``, in its own process), in bf16 and fp16, at 512² and 1024²,
and with ``torch.compile`` where this version of elqproj can turn it on. Each row gives seconds per image,
images per second and the peak CUDA memory allocated during the timed calls (model weights included),
beside the H100 targets (printed, never asserted)::

    bash benchmarks/gpu_suite.sh --json gpu.json                  # on a lent GPU: about 7 minutes
    bash benchmarks/gpu_suite.sh --only 'osediff:*' 'train:*'     # some cases (shell patterns on the ids)
    bash benchmarks/gpu_suite.sh --list                           # the case ids, in run order
    bash benchmarks/gpu_suite.sh --dry-run --json dry.json        # the same logic on the CPU, tiny models

Cases run most important first (f + g with LFO x2 at 512² bf16 leads); a global time budget (``--budget``,
default 420 s from start-up) skips the rest with a printed note, so that the whole command fits in 8
minutes on an H100. ``--dry-run`` swaps in tiny models (the test fixtures' shapes), sides of 64 and 96
px, fp32 and bf16, one timed call per case and SeeSR at 2 steps: it proves the plumbing, its numbers
mean nothing.

Exit status: 0 when every case ran or was skipped, 1 when a case failed (its row says why), 2 for bad
arguments or when there is no CUDA GPU without ``--dry-run``.
"""

from __future__ import annotations

import time

_START = time.perf_counter()  # the budget counts from start-up: imports and model building are part of it

import argparse  # noqa: E402
import fnmatch  # noqa: E402
import gc  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
BACKENDS = ("osediff", "s3diff", "seesr")
PROMPT = "a photo of a bird on a branch"
GB = 1e9  # the targets are in decimal gigabytes
OFFICIAL_COMMAND = "python benchmarks/compare_official.py"


@dataclass(frozen=True)
class Sizes:
    """The sides, dtypes and repeat counts of one mode (the GPU suite or its dry run)."""

    small: int
    large: int
    tiled: int
    dtypes: tuple[str, str]  # the first is the main one: training, tiling and compile run in it
    train_size: int
    train_config: str
    seesr_steps: int
    dry: bool


FULL = Sizes(small=512, large=1024, tiled=4096, dtypes=("bf16", "fp16"), train_size=512, train_config="full",
             seesr_steps=50, dry=False)
DRY = Sizes(small=64, large=96, tiled=96, dtypes=("fp32", "bf16"), train_size=64, train_config="tiny",
            seesr_steps=2, dry=True)


@dataclass(frozen=True)
class Case:
    """One measurement. ``lfo``: None for g alone, k for f + g with k LFO passes; ``checkpointing`` only
    for training. ``estimate_s``: rough H100 seconds (without model building), for the budget."""

    kind: str  # "inference", "tiling" or "training"
    backend: str
    size: int
    dtype: str
    lfo: int | None = None
    compile: bool = False
    batch: int = 1
    checkpointing: bool | None = None
    warmup: int = 2
    repeats: int = 5
    estimate_s: float = 5.0

    @property
    def id(self) -> str:
        if self.kind == "training":
            return f"train:b{self.batch}:ckpt-{'on' if self.checkpointing else 'off'}:{self.dtype}"
        what = "g" if self.lfo is None else f"f+g-lfo{self.lfo}"
        size = f"{self.size}-tiled" if self.kind == "tiling" else str(self.size)
        return f"{self.backend}:{what}:{size}:{self.dtype}" + (":compile" if self.compile else "")

    @property
    def what(self) -> str:
        if self.kind == "training":
            return f"train step, ckpt {'on' if self.checkpointing else 'off'}"
        return ("g" if self.lfo is None else "f+g") + (" tiled" if self.kind == "tiling" else "")


# ------------------------------------------------------------------------------------------ the plan
def plan(sizes: Sizes) -> list[Case]:
    """Every case, most important first (what is left when the budget runs out is the least needed)."""
    main, other = sizes.dtypes
    tiled = Case("tiling", "osediff", sizes.tiled, main, lfo=0, warmup=0, repeats=1, estimate_s=60)
    cases = []
    for backend in BACKENDS:
        cases += inference_cases(backend, sizes.small, main, sizes)
        if backend == "osediff":
            cases.append(tiled)  # the 16 GB target, right after the 512² headline
        cases += inference_cases(backend, sizes.large, main, sizes)
    cases += [Case("training", "osediff", sizes.train_size, main, batch=batch, checkpointing=checkpointing,
                   warmup=1, repeats=2, estimate_s=60)  # the first one starts the process: setup included
              for checkpointing in (True, False) for batch in (1, 2)]
    for backend in BACKENDS:
        cases += inference_cases(backend, sizes.small, other, sizes)
        cases += inference_cases(backend, sizes.large, other, sizes)
    for backend in BACKENDS:  # compilation takes a minute or more per graph: last
        cases += inference_cases(backend, sizes.small, main, sizes, compile=True)
        cases += inference_cases(backend, sizes.large, main, sizes, compile=True)
    if sizes.dry:
        cases = [replace(c, warmup=0, repeats=1) for c in cases]
    return cases


def inference_cases(backend: str, size: int, dtype: str, sizes: Sizes, *, compile: bool = False) -> list[Case]:
    """g alone, and for OSEDiff (g on f's own base, the paper's main setup) f + g with LFO 2 and 0."""
    large = size == sizes.large
    if backend == "seesr":  # 50 steps with CFG: seconds per image
        warmup, repeats, estimate = (1, 1, 25) if large else (1, 2, 8)
    else:
        warmup, repeats, estimate = (2, 5, 5) if large else (3, 10, 3)
    if compile:
        warmup, estimate = max(warmup, 2), estimate + 90
    lfos = (2, 0, None) if backend == "osediff" else (None,)
    return [Case("inference", backend, size, dtype, lfo=lfo, compile=compile, warmup=warmup, repeats=repeats,
                 estimate_s=estimate) for lfo in lfos]


# ---------------------------------------------------------------------------------------- the models
def dape_stand_in() -> Any:
    """A prompt extractor standing in for DAPE beside SeeSR: the fixed text and seeded random image features
    of DAPE's shape ``(B, 145, 512)``, float32 (as ``bench_seesr.py`` feeds them). The tagger's own cost
    is ``bench_prompts.py``'s to measure."""
    from elqproj.prompts import PromptExtractor, PromptResult

    class RandomDAPEFeatures(PromptExtractor):
        name = "random DAPE features"

        def extract(self, images: Any) -> PromptResult:
            batch = images.shape[0]
            features = torch.randn(batch, 145, 512, generator=torch.Generator().manual_seed(0))
            return PromptResult(texts=[PROMPT] * batch, image_features=features.to(images.device))

    return RandomDAPEFeatures()


@dataclass
class Setup:
    """The models of one backend in one dtype: ``g`` alone, and ``fg`` (f + g on one base) for OSEDiff."""

    key: tuple[str, str, bool]
    g: Any
    fg: Any = None
    restorer_options: dict[str, Any] = field(default_factory=dict)


def build_setup(backend: str, dtype_name: str, device: torch.device, sizes: Sizes, folder: Path) -> Setup:
    """Random-weight models of the real sizes (the sibling scripts' builders), or the tiny ones for a dry run."""
    from bench_s3diff import build_engine, build_restorer as build_s3diff  # same folder
    from bench_seesr import FULL as SEESR_FULL, TINY as SEESR_TINY, build_restorer as build_seesr, byte_level_tokenizer

    from elqproj import Projector, RestorationPipeline
    from elqproj.adapters.osediff import OSEDiffRestorer
    from elqproj.adapters.s3diff import S3DiffRestorer
    from elqproj.devices import resolve_device_dtype
    from elqproj.selftest import tiny_engine

    _, dtype = resolve_device_dtype(device, dtype_name)
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = byte_level_tokenizer(folder)
    key = (backend, dtype_name, False)
    if backend == "osediff":
        engine = tiny_engine(device, dtype) if sizes.dry else build_engine(device, dtype, tokenizer)
        f = Projector.from_engine(engine)
        g = OSEDiffRestorer(engine, Projector.from_engine(engine).adapter_set)  # as bench_onestep.py: OSEDiff's layout
        return Setup(key, RestorationPipeline(g), RestorationPipeline(g, projector=f))
    if backend == "s3diff":
        if sizes.dry:
            restorer = S3DiffRestorer.tiny_random(tiny_engine(device, dtype))
        else:
            restorer = build_s3diff(device, dtype, folder)
        return Setup(key, RestorationPipeline(restorer))
    restorer = build_seesr(SEESR_TINY if sizes.dry else SEESR_FULL, device, dtype, tokenizer)
    return Setup(key, RestorationPipeline(restorer, prompt_extractor=dape_stand_in()),
                 restorer_options={"steps": sizes.seesr_steps})


class Setups:
    """Holds one :class:`Setup` at a time (another one's weights would count in the peak memory)."""

    def __init__(self, device: torch.device, sizes: Sizes, folder: Path) -> None:
        self.device, self.sizes, self.folder = device, sizes, folder
        self.current: Setup | None = None

    def get(self, backend: str, dtype: str, compiled: bool) -> Setup:
        if self.current is None or self.current.key != (backend, dtype, compiled):
            self.clear()
            self.current = build_setup(backend, dtype, self.device, self.sizes, self.folder / f"{backend}-{dtype}")
        return self.current

    def clear(self) -> None:
        self.current = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------- compile
def compile_switch(backend: str) -> str | None:
    """How this version of elqproj turns ``torch.compile`` on for ``backend``, or None where it cannot:
    a ``RestorationPipeline.compile()`` method, or a ``compile`` option of the restorer's sampling call.
    The suite never compiles behind the package's back."""
    from elqproj import RestorationPipeline
    from elqproj.adapters.base import get_restorer_class

    if callable(getattr(RestorationPipeline, "compile", None)):
        return "RestorationPipeline.compile()"
    if "compile" in inspect.signature(get_restorer_class(backend)._restore_batch).parameters:
        return "restorer option compile=True"
    return None


# --------------------------------------------------------------------------------------- the measuring
def empty_row(case: Case, status: str) -> dict[str, Any]:
    """A case's row before (or without) a measurement: its settings and empty results."""
    return {"case": case.id, "kind": case.kind, "what": case.what, "backend": case.backend, "size": case.size,
            "dtype": case.dtype, "compile": case.compile, "lfo": case.lfo, "batch": case.batch,
            "gradient_checkpointing": case.checkpointing, "warmup": case.warmup, "repeats": case.repeats,
            "s_per_image": None, "images_per_s": None, "peak_mem_gb": None, "peak_mem_gib": None,
            "memory": None, "status": status}


def memory_fields(gib: float | None, on_gpu: bool) -> dict[str, Any]:
    return {"peak_mem_gib": None if gib is None else round(gib, 3),
            "peak_mem_gb": None if gib is None else round(gib * 2**30 / GB, 3),
            "memory": "CUDA allocated, timed calls" if on_gpu else "process peak RSS since start-up"}


def measure_inference(case: Case, setups: Setups, sizes: Sizes) -> dict[str, Any]:
    """Time one inference case through ``elqproj.benchmarking.benchmark_restore`` (the ``elqproj bench`` core)."""
    from elqproj.benchmarking import benchmark_restore
    from elqproj.tiling import TilingConfig

    setup = setups.get(case.backend, case.dtype, case.compile)
    pipeline = setup.g if case.lfo is None else setup.fg
    options = dict(setup.restorer_options)
    if case.kind == "tiling":
        from elqproj import RestorationPipeline

        pipeline = RestorationPipeline(pipeline.restorer, projector=pipeline.projector)
        # the official thresholds on the 4096² image; the dry run's small tiles force every tiled path
        pipeline.configure_tiling(TilingConfig(mode="always", latent_tile=8, latent_overlap=2, vae_encoder_tile=64,
                                               vae_encoder_pad=8, vae_decoder_tile=8, vae_decoder_pad=2)
                                  if sizes.dry else TilingConfig())
    if case.compile:
        switch = compile_switch(case.backend)
        if switch == "RestorationPipeline.compile()":
            # the dry run checks the plumbing: dynamo traces the networks without inductor's C++ build
            pipeline.compile(**({"backend": "eager"} if sizes.dry else {}))
        else:
            options["compile"] = True
        setup.key = (case.backend, case.dtype, True)  # compiled for good: rebuilt for an uncompiled case
    (result,) = benchmark_restore(pipeline, sizes=[case.size], batch=case.batch, lfo=case.lfo or 0, prompt=PROMPT,
                                  warmup=case.warmup, repeats=case.repeats, seed=0, process_size=0,
                                  restorer_options=options or None)
    row = empty_row(case, "ok")
    if "error" in result:
        row["status"] = result["error"]
        return row
    on_gpu = "peak_allocated_gib" in result
    row.update(s_per_image=result["wall_s"] / case.batch, images_per_s=result["images_per_s"],
               **memory_fields(result.get("peak_allocated_gib", result.get("peak_rss_gib")), on_gpu),
               stages_s={k: v for k, v in result.items() if k.endswith("_s") and k not in ("wall_s", "images_per_s")},
               lfo_passes=result["lfo_passes"])
    if on_gpu:
        row["peak_reserved_gib"] = round(result["peak_reserved_gib"], 3)
    return row


def measure_training(cases: list[Case], device: torch.device, sizes: Sizes, timeout_s: float) -> list[dict[str, Any]]:
    """The training cases in one ``bench_train.py`` process (its own CUDA memory), stopped at ``timeout_s``;
    a case it did not reach gets a row that says so."""
    batches = sorted({c.batch for c in cases})
    checkpointing = [v for v in ("on", "off") if any(c.checkpointing == (v == "on") for c in cases)]
    command = [sys.executable, str(HERE / "bench_train.py"), "--device", str(device), "--dtype", cases[0].dtype,
               "--config", sizes.train_config, "--size", str(sizes.train_size),
               "--batches", *map(str, batches), "--checkpointing", *checkpointing,
               "--warmup", str(cases[0].warmup), "--repeats", str(cases[0].repeats)]
    print(f"  $ python {' '.join(command[1:])}", flush=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(timeout_s, 1.0))
        stdout = done.stdout
        last_error = (done.stderr.strip().splitlines() or ["no output"])[-1]
        missing = f"error: bench_train.py: {last_error}" if done.returncode else "error: bench_train.py gave no row"
    except subprocess.TimeoutExpired as exc:  # the rows it printed before it was stopped still count
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        missing = f"skipped: budget spent (the training process was stopped after {timeout_s:.0f} s)"
    measured = {}
    for line in stdout.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "batch" in record:
            measured[(record["batch"], record["gradient_checkpointing"])] = record
    rows = []
    for case in cases:
        record = measured.get((case.batch, case.checkpointing))
        if record is None:
            rows.append(empty_row(case, missing))
            continue
        row = empty_row(case, record.get("result", "ok"))
        if "s_per_step_median" in record:
            step = record["s_per_step_median"]
            on_gpu = "peak_gpu_memory_gib" in record
            row.update(s_per_image=step / case.batch, images_per_s=case.batch / step, s_per_step=step,
                       **memory_fields(record.get("peak_gpu_memory_gib", record.get("peak_process_rss_gib")), on_gpu))
            if "peak_gpu_reserved_gib" in record:
                row["peak_reserved_gib"] = record["peak_gpu_reserved_gib"]
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------- targets
def target_of(case: Case, sizes: Sizes) -> tuple[str, dict[str, float]]:
    """The H100 target printed beside a case (a dry run prints them at its own sizes' places): its text and
    its limits (``s_per_image``, ``peak_mem_gb``)."""
    if case.kind == "training":
        return ("<= 40 GB", {"peak_mem_gb": 40}) if case.batch == 1 and case.checkpointing else ("", {})
    if case.kind == "tiling":
        return "<= 16 GB", {"peak_mem_gb": 16}
    limits: dict[str, float] = {}
    texts = []
    if case.lfo == 2 and case.size == sizes.small:
        limits["s_per_image"] = 0.120
        texts.append("<= 120 ms")
    if case.size == sizes.small:
        limits["peak_mem_gb"] = 8
        texts.append("<= 8 GB")
    if case.lfo is None:
        texts.append(">= 2.5x official (see below)")
    return ", ".join(texts), limits


def meets(row: dict[str, Any], limits: dict[str, float], sizes: Sizes) -> str:
    """"yes" / "no" against the measurable limits, "" where there are none, nothing was measured, or in a
    dry run (the targets are for the full sizes)."""
    if sizes.dry or not limits or row["s_per_image"] is None:
        return ""
    ok = all(row.get(key) is not None and row[key] <= limit for key, limit in limits.items())
    return "yes" if ok else "no"


# -------------------------------------------------------------------------------------------- output
def format_table(rows: list[dict[str, Any]]) -> str:
    columns = [("what", "what"), ("backend", "backend"), ("size", "size"), ("dtype", "dtype"),
               ("compile", "compile"), ("lfo", "lfo"), ("batch", "batch"), ("s_per_image", "s/image"),
               ("images_per_s", "images/s"), ("peak_mem_gb", "peak GB"), ("target", "target (H100)"),
               ("meets_target", "meets"), ("status", "status")]

    def cell(key: str, value: Any) -> str:
        if key == "compile":
            return "on" if value else "off"
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4f}" if key == "s_per_image" else f"{value:.2f}"
        return str(value)

    header = [title for _, title in columns]
    body = [[cell(key, row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(columns))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in (header, *body)]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def elapsed() -> float:
    return time.perf_counter() - _START


def run(cases: list[Case], sizes: Sizes, device: torch.device, budget_s: float) -> Iterator[dict[str, Any]]:
    """Measure ``cases`` in order, one row each; past the budget the rest are skipped with a note."""
    with tempfile.TemporaryDirectory(prefix="elqproj-gpu-suite-") as tmp:
        setups = Setups(device, sizes, Path(tmp))
        done: set[str] = set()
        for case in cases:
            if case.id in done:
                continue
            remaining = budget_s - elapsed()
            if remaining <= 0 or (not sizes.dry and case.estimate_s > remaining):
                print(f"  note: skipping {case.id}: {max(remaining, 0):.0f} s of the {budget_s:.0f} s budget left, "
                      f"the case needs about {case.estimate_s:.0f} s", flush=True)
                yield empty_row(case, "skipped: budget spent")
                continue
            if case.compile and compile_switch(case.backend) is None:
                yield empty_row(case, "compile: not supported")
                continue
            if case.compile and sizes.dry:
                yield empty_row(case, "compile: not run in a dry run (compiling takes minutes on a CPU)")
                continue
            print(f"  {case.id} ...", flush=True)
            start = time.perf_counter()
            if case.kind == "training":
                group = [c for c in cases if c.kind == "training"]
                setups.clear()  # the training process gets the whole GPU
                rows = measure_training(group, device, sizes, remaining)
                done.update(c.id for c in group)
            else:
                try:
                    rows = [measure_inference(case, setups, sizes)]
                except Exception as exc:  # one failing case must not cost the others their turn
                    traceback.print_exc()
                    first_line = (str(exc).splitlines() or [""])[0]
                    rows = [empty_row(case, f"error: {type(exc).__name__}: {first_line}")]
                    setups.clear()
            print(f"  ... {time.perf_counter() - start:.1f} s", flush=True)
            yield from rows


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu_suite.sh", description=__doc__.splitlines()[0],
                                     epilog="Case ids: backend:g|f+g-lfoK:size[-tiled]:dtype[:compile] and "
                                            "train:bN:ckpt-on|off:dtype; --list prints them.")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results to FILE")
    parser.add_argument("--dry-run", action="store_true",
                        help="run the suite's logic on the CPU with tiny models and sizes (numbers mean nothing)")
    parser.add_argument("--budget", type=float, default=420.0, metavar="SECONDS",
                        help="time from start-up after which the remaining cases are skipped (default %(default)s)")
    parser.add_argument("--only", nargs="+", default=None, metavar="PATTERN",
                        help="run only the cases whose id matches one of these shell patterns")
    parser.add_argument("--list", action="store_true", help="print the case ids in run order and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    sizes = DRY if args.dry_run else FULL
    cases = plan(sizes)
    if args.only:
        cases = [c for c in cases if any(fnmatch.fnmatchcase(c.id, p) for p in args.only)]
        if not cases:
            print(f"gpu_suite: no case matches {' '.join(args.only)}; --list shows the ids.", file=sys.stderr)
            return 2
    if args.list:
        print("\n".join(c.id for c in cases))
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_suite: no CUDA GPU here (torch.cuda.is_available() is False): this suite measures a GPU. Run it "
              "on a machine with one, or add --dry-run to check the suite itself on the CPU with tiny models.",
              file=sys.stderr)
        return 2

    from diffusers.utils import logging as diffusers_logging

    from elqproj.benchmarking import device_name

    diffusers_logging.set_verbosity_error()  # random models cast with .to(): nothing to warn about
    device = torch.device("cpu" if args.dry_run else "cuda")
    name = device_name(device, f"cpu ({torch.get_num_threads()} threads)")
    print(f"elqproj GPU suite: {name}, torch {torch.__version__}, {len(cases)} cases, budget {args.budget:.0f} s")
    if args.dry_run:
        print("dry run: tiny random models, tiny sizes, one timed call per case; the numbers mean nothing")
    else:
        print("random full-size weights (no download); peak memory: CUDA allocated during the timed calls")
    switches = {backend: compile_switch(backend) for backend in BACKENDS}
    for backend, switch in switches.items():
        print(f"compile ({backend}): {switch or 'not supported'}")

    rows = []
    for row in run(cases, sizes, device, args.budget):
        case = next(c for c in cases if c.id == row["case"])
        row["target"], limits = target_of(case, sizes)
        row["meets_target"] = meets(row, limits, sizes)
        row["device"] = name
        rows.append(row)
        measured = "" if row["s_per_image"] is None else (
            f": {row['s_per_image']:.4f} s/image, {row['images_per_s']:.2f} images/s, peak {row['peak_mem_gb']} GB")
        print(f"  {row['case']} {row['status']}{measured}", flush=True)

    print()
    print(f"device: {name}")
    print(format_table(rows))
    skipped = [r["case"] for r in rows if r["status"].startswith("skipped")]
    failed = [r["case"] for r in rows if r["status"].startswith("error")]
    if skipped:
        print(f"note: {len(skipped)} case(s) skipped when the {args.budget:.0f} s budget was spent: "
              + ", ".join(skipped))
    if any(r["status"] == "compile: not supported" for r in rows):
        print("compile: not supported by this version of elqproj (no RestorationPipeline.compile, no compile "
              "option of the restorers); the compile rows were not run")
    print("peak GB: 10^9 bytes, " + ("the process's peak RSS since start-up (CPU)" if args.dry_run else
                                     "CUDA memory allocated during the timed calls, weights included")
          + "; s/image of a training row: seconds per step / batch")
    print(f"note: g alone against the official scripts (target >= 2.5x on an H100) is not measured here: run "
          f"`{OFFICIAL_COMMAND}` on the same machine")
    print(f"total {elapsed():.1f} s")
    if args.json:
        result = {"device": name, "torch": torch.__version__, "dry_run": args.dry_run, "budget_s": args.budget,
                  "elapsed_s": round(elapsed(), 1), "compile": switches, "official_comparison": OFFICIAL_COMMAND,
                  "cases": rows}
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"written: {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
