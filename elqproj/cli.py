"""The ``elqproj`` command line: ``restore``, ``bench``, ``info`` (and the commands other modules add).

Each sub-command is one ``_cmd_<name>(args) -> int`` function plus its block in :func:`build_parser`;
the work itself lives in the library, so everything the CLI does is also one Python call away.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .auto import describe_decision
from .errors import ElqprojError, InvalidInputError
from .imageio import expand_image_paths
from .manifest import MANIFEST_NAME
from .pipeline import LFO_MAX

logger = logging.getLogger("elqproj")


def _key_value(value: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON where it is JSON (numbers, true/false, null), else text."""
    key, sep, raw = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = raw
    return key.strip().replace("-", "_"), parsed


def _count(minimum: int):
    """An argparse type: an integer of at least ``minimum``."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value!r}")
        return number
    return parse


def _name_weights(value: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME=WEIGHTS`` (a registered name and, optionally, its weights)."""
    name, _, weights = value.partition("=")
    if not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME or NAME=WEIGHTS, got {value!r}")
    return name.strip(), weights.strip() or None


def _lfo(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lfo takes an integer from 0 to {LFO_MAX} or 'auto', not {value!r}") from None
    if not 0 <= number <= LFO_MAX:
        raise argparse.ArgumentTypeError(f"--lfo must be from 0 to {LFO_MAX} (the paper recommends 2), not {number}")
    return number


def _load_pipeline(args: argparse.Namespace, *, fresh_projector: bool = False):
    """The one :class:`~elqproj.pipeline.RestorationPipeline` every model command runs, from the model
    options (:func:`_add_model_arguments`): f from ``--projector`` (without it g alone, or a fresh untrained
    projector when ``fresh_projector``), g from ``--backend``, Y from ``--prompt-extractor`` (loaded once),
    all on ``--device`` / ``--dtype``, with ``--tiling`` / ``--tile-size``.

    Returns:
        ``(pipeline, the fixed --prompt text or None)``.
    """
    from .pipeline import RestorationPipeline
    from .tiling import TilingConfig

    text, extractor = args.prompt, args.prompt_extractor
    extractor_options = dict(args.prompt_option or [])
    if args.prompt_weights:
        extractor_options["weights"] = args.prompt_weights
    if extractor_options and extractor is None:
        raise InvalidInputError("--prompt-weights and --prompt-option need --prompt-extractor (the extractor they "
                                "belong to).")
    restorer_options: dict[str, Any] = dict(args.backend_option or [])
    if args.backend_weights:
        restorer_options["weights"] = args.backend_weights
    projector: Any = args.projector
    if projector is None and fresh_projector:
        from .projector import Projector

        base = {"base_model": args.base_model} if args.base_model else {}
        projector = Projector.from_base(**base, device=args.device, dtype=args.dtype)
    projector_options = {"base_model": args.base_model} if args.base_model and args.projector else None
    if args.base_model and projector is None:
        restorer_options["base_model"] = args.base_model  # g alone: the base is g's
    pipeline = RestorationPipeline.from_components(
        projector=projector, projector_options=projector_options, restorer=args.backend,
        restorer_options=restorer_options, prompt_extractor=extractor,
        prompt_extractor_options=extractor_options or None,
        device=args.device, dtype=args.dtype, compile=args.compile, preview_decoder=args.preview_decoder,
    )
    tile = {}
    if args.tile_size:  # official proportions: overlap a third of the 96-latent tile (32)
        tile = {"latent_tile": args.tile_size // 8, "latent_overlap": args.tile_size // 8 // 3}
    if args.tiling != "auto" or tile:
        pipeline.configure_tiling(TilingConfig(mode=args.tiling, **tile))
    return pipeline, text


def _cmd_restore(args: argparse.Namespace) -> int:
    from .archive import distributed_state, output_paths, pending_pairs, restore_files
    from .manifest import merge_manifest

    mode_options = _mode_options(args)  # a usage error is found before any work
    inputs = expand_image_paths(args.inputs)
    targets = output_paths(inputs, args.output)
    manifest = args.manifest
    if manifest is None and not (len(inputs) == 1 and targets[0] == Path(args.output)):
        manifest = Path(args.output) / MANIFEST_NAME  # a folder of outputs gets a manifest
    if args.resume and manifest is None:
        raise InvalidInputError("--resume reads the manifest of the earlier run: restore into a folder (-o DIR), or "
                                "name the manifest with --manifest.")
    pairs = list(zip(inputs, targets))
    state = distributed_state(args.device)
    if not pending_pairs(pairs, manifest=manifest, resume=args.resume, skip_existing=args.skip_existing):
        logger.info("nothing to do: every output is done")
        if args.resume and state.is_main_process:
            merge_manifest(manifest)  # parts of an interrupted run that had finished every image
        return 0
    if args.device is None and state.num_processes > 1:
        args.device = str(state.device)  # under accelerate launch: this process's own device
    pipeline, text = _load_pipeline(args)
    restorer_options = dict(args.restore_option or [])
    if args.color_fix:
        restorer_options["color_fix"] = args.color_fix
    failures = _Failures()
    report = restore_files(
        pipeline, pairs, manifest=manifest, resume=args.resume, skip_existing=args.skip_existing, seed=args.seed,
        batch_size=args.batch_size, num_workers=args.workers, progress=not args.quiet, on_error=failures,
        state=state, prompt=text, upscale=args.upscale, process_size=args.process_size,
        restorer_options=restorer_options, **mode_options,
    )
    if args.auto and not args.quiet and state.is_main_process:
        for record in report.done:
            if record.decision is not None:
                print(f"{record.input}: {describe_decision(record.decision)}")
    failures.failed = [(Path(record.input), record.error or "") for record in report.failed]
    if not state.is_main_process:
        return 1 if failures.failed else 0
    return failures.report(len(report.records))


def _mode_options(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline call's lfo / strength / mode from --lfo, --strength and --auto."""
    if args.auto:
        if args.lfo != 0 or args.strength is not None:
            raise InvalidInputError("--auto chooses the LFO passes and the strength of each image: drop --lfo and "
                                    "--strength (docs/auto-mode.md).")
        return {"mode": "auto"}
    return {"lfo": args.lfo, "strength": 1.0 if args.strength is None else args.strength}


def _cmd_degrade(args: argparse.Namespace) -> int:
    from .degradations.files import degrade_files

    failures = _Failures()
    written = degrade_files(args.inputs, args.output, config=args.preset, seed=args.seed, scale=args.scale,
                            save_params=args.save_params, device=args.device, progress=not args.quiet,
                            on_error=failures)
    return failures.report(len(written) + len(failures.failed))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate, load_evaluation_config

    config = load_evaluation_config(
        args.config, data=args.data, split=args.split, limit=args.limit, size=args.size, degradation=args.preset,
        seed=args.seed, methods=args.method, metrics=args.metrics, channel=args.channel, out=args.out,
        device=args.device, dtype=args.dtype, complexity=args.complexity or None,
    )
    result = evaluate(config, progress=not args.quiet)
    for spec in result.metrics:
        print(f"{spec.label:>10}  {result.settings[spec.name]}")
    print()
    print((result.out / "summary.md").read_text(encoding="utf-8"))
    print(f"report: {result.files['report.html']}")
    return 0


def _cmd_tag(args: argparse.Namespace) -> int:
    from . import imageio
    from .prompts import load_prompt_extractor

    paths = expand_image_paths(args.inputs)
    options = {key: value for key in ("tag_list", "tag_thresholds") if (value := getattr(args, key))}
    extractor = load_prompt_extractor(args.extractor, weights=args.weights, device=args.device, dtype=args.dtype,
                                      **options)
    failures = _Failures()
    for path in paths:
        try:
            text = extractor([imageio.load_image(path)])[0]
        except (ElqprojError, OSError) as exc:
            failures(path, exc)
            continue
        print(json.dumps({"file": str(path), "prompt": text}) if args.json else f"{path}\t{text}")
    return failures.report(len(paths))


class _Failures:
    """Collects the files a folder command could not process (it goes on with the others) and reports them."""

    def __init__(self) -> None:
        self.failed: list[tuple[Path, str]] = []

    def __call__(self, path: Path, exc: Exception | str) -> None:
        self.failed.append((path, str(exc)))
        from tqdm.auto import tqdm

        tqdm.write(f"error: {path}: {exc}", file=sys.stderr)

    def report(self, total: int) -> int:
        """Exit status: 0 when every file went through, else 1 after a summary of the failures."""
        if not self.failed:
            return 0
        print(f"{len(self.failed)} of {total} file(s) failed:", file=sys.stderr)
        for path, reason in self.failed:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoDefaults, DemoModels, build_demo, launch_demo
    from .pipeline import RestorationPipeline
    from .prompts import load_prompt_extractor

    examples = expand_image_paths(args.examples) if args.examples else None
    pipeline, text = _load_pipeline(args)
    models = DemoModels.from_pipeline(pipeline, backend=args.backend, extractor=args.prompt_extractor)
    for name, weights in args.add_backend or []:
        models.restorers[name] = RestorationPipeline.from_components(
            projector=pipeline.projector, restorer=name, restorer_options={"weights": weights} if weights else None,
            device=pipeline.device, dtype=pipeline.dtype).restorer
    for name, weights in args.add_prompt_extractor or []:
        models.extractors[name] = load_prompt_extractor(name, weights=weights, device=pipeline.device)
    defaults = DemoDefaults(lfo=str(args.lfo), seed=args.seed, upscale=args.upscale, prompt_text=text or "",
                            process_size=args.process_size)
    demo = build_demo(models, defaults=defaults, examples=examples)
    launch_demo(demo, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, concurrency=args.concurrency)
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from .weights import COMPONENTS, fetch

    if args.list:
        rows = _weights_rows()
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"{'component':<10} {'cached':<6} {'size':>8}  {'licence':<40} used by / where")
        for row in rows:
            print(f"{row['name']:<10} {'yes' if row['cached'] else 'no':<6} {row['size']:>8}  {row['licence'][:40]:<40} "
                  f"{', '.join(row['used_by'])}")
            print(f"{'':<10} {row['path'] or row['source']}")
        return 0
    names = list(COMPONENTS) if args.all else args.names
    if not names:
        raise InvalidInputError("Name the components to download (elqproj download --list shows them), or --all.")
    failures = _Failures()
    for name in names:
        try:
            path = fetch(name, progress=not args.quiet)
        except ElqprojError as exc:  # the other components still come
            failures(Path(name), exc)
            continue
        print(f"{name}: {path}")
    return failures.report(len(names))


def _weights_rows() -> list[dict[str, Any]]:
    """One row per component of the weights table: cached (and where), download size, licence, users."""
    from .weights import COMPONENTS, cached_path

    rows = []
    for component in COMPONENTS.values():
        path = cached_path(component.name)
        rows.append({"name": component.name, "cached": path is not None, "path": str(path) if path else None,
                     "size": component.size, "licence": component.licence, "used_by": component.used_by,
                     "source": component.source, "kind": component.kind})
    return rows


def _cmd_convert(args: argparse.Namespace) -> int:
    from .conversion import convert_component, push_folder

    if args.to is None and args.push_to_hub is None:
        raise InvalidInputError("Give --to DIR (the folder to write) and/or --push-to-hub ORG/NAME.")
    if args.to is not None:
        folder = convert_component(args.name, args.source, args.to)
        print(f"{args.name}: written to {folder}")
    else:
        import tempfile

        folder = convert_component(args.name, args.source, Path(tempfile.mkdtemp(prefix=f"elqproj-{args.name}-")))
    if args.push_to_hub:
        url = push_folder(folder, args.push_to_hub, revision=args.revision, private=args.private)
        print(f"{args.name}: uploaded to {args.push_to_hub}" + (f" ({args.revision})" if args.revision else "") + f": {url}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .training.command import run

    return run(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from .benchmarking import benchmark_restore, check_bench_options, format_table

    check_bench_options(sizes=args.sizes, batch=args.batch, warmup=args.warmup, repeats=args.repeats)  # before loading
    pipeline, text = _load_pipeline(args, fresh_projector=True)
    rows = benchmark_restore(pipeline, sizes=args.sizes, batch=args.batch, lfo=args.lfo, prompt=text,
                             warmup=args.warmup, repeats=args.repeats, seed=args.seed,
                             process_size=args.process_size, progress=not args.quiet)
    source = args.projector or "untrained (Projector.from_base)"
    rows = [{"projector": source, **row} for row in rows]
    first = rows[0]
    print(f"elqproj bench: backend {first['backend']}, projector {source}, prompt {first['prompt']}, "
          f"lfo {first['lfo']}, batch {first['batch']}")
    device = first["device_name"] if first["device"] == "cpu" else f"{first['device_name']} ({first['device']})"
    print(f"device {device}, dtype {first['dtype']}; {args.warmup} warm-up + {args.repeats} timed calls per size; "
          "times: median seconds per call")
    if not args.projector:
        print("no --projector: timing a fresh, untrained projector; a trained LoRA has the same shapes and "
              "costs exactly the same")
    print(format_table(rows))
    print("size: input side (px); run side: the side f and g run at (inputs below --process-size are enlarged to it)")
    print("prompt: Y on the input and on the final LQ proxy; project: f's first pass; lfo: the LFO rounds "
          "(Y and f again); restore: g")
    if any("peak_rss_gib" in row for row in rows):
        print("peak RSS: the process's peak since it started (model loading included; it cannot be reset)")
    else:
        print("alloc / reserved: CUDA peaks over the timed calls (reset after the warm-up)")
    if any("error" in row for row in rows):
        print("out of memory: that size does not fit with these settings; try --dtype fp16, --tiling always "
              "or a smaller --batch")
    enlarged = [str(row["size"]) for row in rows if row.get("process_side", row["size"]) != row["size"]]
    if enlarged:
        print(f"note: size(s) {', '.join(enlarged)} ran at --process-size {args.process_size} px, not at their own "
              "size; --process-size 0 times them as given")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def _cmd_selftest(args: argparse.Namespace) -> int:
    from .selftest import format_checks, run_selftest

    def line(check) -> None:
        if not args.json:
            print(f"{check.status.upper():<6}  {check.seconds:7.2f}  {check.name:<26}  {check.detail}", flush=True)

    if not args.json:
        print("elqproj selftest: tiny random models built in memory (no download); checks the code paths on this "
              "device and dtype, not quality")
        print(f"{'status':<6}  {'seconds':>7}  {'check':<26}  detail")
    checks = run_selftest(args.device, args.dtype, on_check=line)
    if args.json:
        print(json.dumps([c.as_dict() for c in checks], indent=2))
    else:
        print(format_checks(checks).splitlines()[-1])
    return 1 if any(c.status == "fail" for c in checks) else 0


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    from .adapters.base import get_restorer_class, list_restorers

    backends: dict[str, Any] = {}
    for name in list_restorers():
        try:
            backends[name] = get_restorer_class(name).capabilities.as_dict()
        except ElqprojError as exc:
            backends[name] = {"error": str(exc)}
    versions = {"elqproj": __version__, "python": platform.python_version(), "torch": torch.__version__}
    from importlib.metadata import PackageNotFoundError, version

    for package in ("diffusers", "transformers", "peft", "huggingface_hub", "timm", "accelerate"):
        try:  # the installed distribution's version: importing these libraries would take seconds
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    devices = {"cuda": torch.cuda.is_available(),
               "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
               "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())}
    weights = _weights_rows()
    info = {"versions": versions, "devices": devices, "backends": backends, "weights": weights}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"elqproj {__version__}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "elqproj"))
    gpu = ", ".join(devices["cuda_devices"]) or "none"
    print(f"devices: cpu; cuda: {gpu}")
    print("backends:")
    for name, cap in backends.items():
        if "error" in cap:
            print(f"  {name:<10} unavailable: {cap['error']}")
            continue
        dtypes = "fp32" + ("/fp16" if cap["supports_fp16"] else "") + ("/bf16" if cap["supports_bf16"] else "")
        print(f"  {name:<10} x{cap['scale']}, {cap['steps']} step(s), {dtypes}, "
              f"{'trainable-through' if cap['differentiable'] else 'inference-only'}, "
              f"{'tiling' if cap['supports_tiling'] else 'no tiling'}, sides a multiple of {cap['size_multiple']} px; "
              f"base {cap['base_model']}")
        print(f"  {'':<10} code {cap['code_licence']}; weights {cap['weights_licence']}")
    print("weights (elqproj download --list):")
    for row in weights:
        print(f"  {row['name']:<10} {'cached' if row['cached'] else 'not cached':<11} {row['size']:>8}, "
              f"used by {', '.join(row['used_by'])}")
    return 0


def _add_model_arguments(p: argparse.ArgumentParser, *, projector_help: str) -> None:
    """The options that choose and run the models (read by :func:`_load_models`), shared by restore and bench."""
    p.add_argument("--projector", help=projector_help)
    p.add_argument("--backend", default="osediff", help="restorer name (see `elqproj info`)")
    p.add_argument("--backend-weights", help="weights of the backend (path, Hub id or URL)")
    p.add_argument("--backend-option", type=_key_value, action="append", metavar="KEY=VALUE",
                   help="another loading option of the backend, repeatable (e.g. de_net=de_net.pth for s3diff)")
    p.add_argument("--base-model", help="SD base model directory or Hub id (overrides the default)")
    p.add_argument("--prompt-extractor", help="prompt extractor name (ram, dape, vlm, ...; default: none)")
    p.add_argument("--prompt-weights", help="weights of the --prompt-extractor (e.g. DAPE.pth)")
    p.add_argument("--prompt-option", type=_key_value, action="append", metavar="KEY=VALUE",
                   help="another option of the --prompt-extractor, repeatable (e.g. tag_list=ram_tag_list.txt)")
    p.add_argument("--prompt", help="a fixed prompt text instead of the extractor's prompts")
    p.add_argument("--lfo", type=_lfo, default=0, help=f"Look-Forward-Once passes, 0 to {LFO_MAX}, or 'auto' (default 0; the paper recommends 2)")
    p.add_argument("--seed", type=int, default=None, help="random seed (reproducible results)")
    p.add_argument("--process-size", type=int, default=512,
                   help="enlarge so the short side is at least this many pixels (0: off; default 512)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="weights dtype")
    p.add_argument("--tiling", default="auto", choices=["auto", "always", "never"], help="latent/VAE tiling")
    p.add_argument("--preview-decoder", default=None, metavar="taesd|DIR",
                   help="decode the LFO passes the tagger looks at with TAESD (cheaper; the result keeps the full decoder)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNets, VAEs and ControlNet (slow first call per size; faster on GPUs)")
    p.add_argument("--tile-size", type=int, default=None, help="latent tile size in image pixels, at least 32 (default 768)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="elqproj", description="Extreme blind image restoration.")
    parser.add_argument("--version", action="version", version=f"elqproj {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("restore", help="restore images (projector f, then restorer g)")
    p.add_argument("inputs", nargs="+", help="image files, folders or globs")
    p.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    _add_model_arguments(p, projector_help="projector directory or Hub id; without it only the backend runs")
    p.add_argument("--upscale", type=int, default=1, help="enlarge the input this many times before f and g (default 1); --process-size "
                   "may enlarge further: a 451x300 input at the default 512 comes back 770x512")
    p.add_argument("--color-fix", choices=["adain", "wavelet", "none"], help="colour correction of g")
    p.add_argument("--restore-option", type=_key_value, action="append", metavar="KEY=VALUE",
                   help="another option of the backend's restore call, repeatable (e.g. steps=20 for seesr)")
    p.add_argument("--strength", type=float, default=None,
                   help="how far f moves the input, 0 (g gets the input) to 1 (the trained projector, default)")
    p.add_argument("--auto", action="store_true",
                   help="score each input (MUSIQ) and choose f, LFO passes and strength per image (docs/auto-mode.md)")
    p.add_argument("--skip-existing", action="store_true", help="do not redo outputs that exist")
    p.add_argument("--resume", action="store_true",
                   help="redo only the images the manifest does not record as done (after a crash or preemption)")
    p.add_argument("--manifest", type=Path, default=None,
                   help=f"JSON-lines record of every image (default: <output folder>/{MANIFEST_NAME}; none for a "
                        "single output file)")
    p.add_argument("--batch-size", type=_count(1), default=1,
                   help="images of one size restored per call (default 1; larger keeps a GPU busy)")
    p.add_argument("--workers", type=_count(0), default=None,
                   help="processes decoding files ahead of the models (default 2; 0: decode in this process)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_restore)

    p = sub.add_parser("bench", help="time restoration (Y, f with LFO, g) and its peak memory on this machine")
    _add_model_arguments(p, projector_help="projector directory or Hub id; without it a fresh untrained projector "
                                           "is timed (same cost as a trained one)")
    p.add_argument("--sizes", type=int, nargs="+", default=[512],
                   help="side in px of the square synthetic input image(s); sides below --process-size run at "
                        "--process-size (default 512)")
    p.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per size first (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per size; medians are reported (default 5)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the rows to this JSON file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("demo", help="a local web page: upload a photo, restore it, compare before/after")
    _add_model_arguments(p, projector_help="projector directory or Hub id; without it the page runs g alone")
    p.add_argument("--add-backend", type=_name_weights, action="append", metavar="NAME[=WEIGHTS]",
                   help="another restorer the page offers, repeatable (e.g. seesr=path/to/seesr)")
    p.add_argument("--add-prompt-extractor", type=_name_weights, action="append", metavar="NAME[=WEIGHTS]",
                   help="another prompt extractor the page offers, repeatable (e.g. dape=DAPE.pth)")
    p.add_argument("--upscale", type=int, default=1, choices=[1, 2, 4], help="the page's first upscale (default 1)")
    p.add_argument("--examples", nargs="+", default=None, help="image files, folders or globs offered as examples")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--max-upload-mb", type=float, default=20, help="largest accepted upload in MB (default 20)")
    p.add_argument("--concurrency", type=_count(1), default=1,
                   help="restorations run at once; the others queue (default 1: one GPU)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("degrade", help="synthesise degraded images (Real-ESRGAN second-order pipeline)")
    p.add_argument("inputs", nargs="+", help="image files, folders or globs")
    p.add_argument("-o", "--output", required=True, help="output folder (<stem>.png per input)")
    p.add_argument("--preset", default="elq", help="realesrgan, osediff or elq (default elq)")
    p.add_argument("--seed", type=int, default=0, help="base seed; each image's seed derives from it and its name")
    p.add_argument("--scale", type=int, default=None, help="fixed final down-scale factor (default: the preset's)")
    p.add_argument("--save-params", action="store_true", help="write <stem>.json with every random choice")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_degrade)

    p = sub.add_parser("evaluate", help="the paper's evaluation: ELQ inputs, methods, metrics, tables, plots, report")
    p.add_argument("--config", type=Path, default=None, help="a YAML evaluation config (configs/eval_*.yaml); flags override it")
    p.add_argument("--data", default=None, help="a folder of HQ images, div2k-train / div8k-train, or a Hugging Face dataset id")
    p.add_argument("--split", default=None, help="dataset split (Hugging Face datasets; default train)")
    p.add_argument("--limit", type=_count(1), default=None, help="evaluate the first N images only")
    p.add_argument("--size", type=int, default=None, help="short side resize + centre crop, pixels (default 512; 0: as they are)")
    p.add_argument("--preset", default=None, help="ELQ degradation preset (default elq)")
    p.add_argument("--seed", type=int, default=None, help="seed of the ELQ inputs and of every method (default 0)")
    p.add_argument("--method", action="append", default=None, metavar="SPEC",
                   help="a method, repeatable: 'osediff' or 'projector=DIR,osediff,lfo=2' (docs/evaluation.md)")
    p.add_argument("--metrics", nargs="+", default=None,
                   help="psnr ssim lpips dists fid niqe musiq clipiqa (default: all of them)")
    p.add_argument("--channel", choices=["y", "rgb"], default=None, help="PSNR/SSIM on the Y channel (default) or RGB")
    p.add_argument("--out", default=None, help="output folder (default eval)")
    p.add_argument("--complexity", action="store_true", help="also measure params, MACs and latency per stage (Table 5)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="model dtype (default fp32)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("selftest", help="check every part on this device and dtype with tiny random models "
                                        "(no download): the first command on a new machine")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="model dtype (default fp32)")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(func=_cmd_selftest)

    p = sub.add_parser("tag", help="print the prompt a prompt extractor gives each image")
    p.add_argument("inputs", nargs="+", help="image files, folders or globs")
    p.add_argument("--extractor", default="ram", help="ram, dape, vlm, ... (default ram)")
    p.add_argument("--weights", default=None, help="extractor weights (path, Hub id or URL)")
    p.add_argument("--tag-list", default=None, help="RAM/DAPE tag list file (default: the official one, downloaded)")
    p.add_argument("--tag-thresholds", default=None,
                   help="RAM/DAPE per-tag threshold file (default: the official one, downloaded)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"])
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_cmd_tag)

    p = sub.add_parser("download", help="download official weights into the cache (resumable, verified)")
    p.add_argument("names", nargs="*", help="components (see --list), e.g. seesr dape")
    p.add_argument("--all", action="store_true", help="every component (over 17 GB)")
    p.add_argument("--list", action="store_true", help="what is cached, where, sizes, licences, users")
    p.add_argument("--json", action="store_true", help="--list as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("convert", help="official weights -> a Hub-ready folder (safetensors + model card)")
    p.add_argument("name", help="component (osediff, s3diff, de-net, seesr, dape, ram)")
    p.add_argument("--from", dest="source", required=True, help="the official file, or the folder holding it")
    p.add_argument("--to", default=None, help="the folder to write")
    p.add_argument("--push-to-hub", default=None, metavar="ORG/NAME", help="upload the folder to this Hub repository")
    p.add_argument("--revision", default=None, help="the Hub branch to upload to (created when missing)")
    p.add_argument("--private", action="store_true", help="create the Hub repository private")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("train", help="train a projector with the IRIB objective (docs/training.md)")
    from .training.command import add_arguments as add_train_arguments

    add_train_arguments(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("info", help="backends, their capabilities and licences, devices, versions")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except ElqprojError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
