"""Restore every image of a folder with a projector (f), a restorer (g) and a prompt extractor (Y).

    python examples/restore_folder.py photos/ restored/ --projector ./my-projector --backend osediff \
        --prompt-extractor ram --lfo 2 --seed 0

One RestorationPipeline holds the models, loaded once; ``restore_folder`` writes each image atomically as
PNG with a manifest (``restored/manifest.jsonl``), goes on past a bad file, and resumes with ``--resume``.
Run it under ``accelerate launch --multi_gpu --num_processes N`` to share the folder over N GPUs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from elqproj import RestorationPipeline
from elqproj.archive import distributed_state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input_dir")
    parser.add_argument("output_dir")
    parser.add_argument("--projector", required=True, help="projector directory or Hub id")
    parser.add_argument("--backend", default="osediff")
    parser.add_argument("--backend-weights", default=None)
    parser.add_argument("--base-model", default=None, help="override the projector's SD2.1 base (dir or Hub id)")
    parser.add_argument("--prompt-extractor", default=None, help="extractor name (ram, dape, vlm)")
    parser.add_argument("--prompt-weights", default=None, help="weights of the extractor (e.g. DAPE.pth)")
    parser.add_argument("--prompt", default=None, help="a fixed text instead of the extractor's prompts")
    parser.add_argument("--lfo", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--process-size", type=int, default=512)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)

    state = distributed_state(args.device)  # under accelerate launch: this process's share and device
    device = args.device or (state.device if state.num_processes > 1 else None)

    pipeline = RestorationPipeline.from_components(
        projector=args.projector, projector_options={"base_model": args.base_model} if args.base_model else None,
        restorer=args.backend, restorer_options={"weights": args.backend_weights} if args.backend_weights else None,
        prompt_extractor=args.prompt_extractor,
        prompt_extractor_options={"weights": args.prompt_weights} if args.prompt_weights else None,
        device=device, dtype=args.dtype,
    )
    report = pipeline.restore_folder(args.input_dir, args.output_dir, prompt=args.prompt, lfo=args.lfo,
                                     seed=args.seed, process_size=args.process_size, batch_size=args.batch_size,
                                     resume=args.resume)
    if not state.is_main_process:  # the report covers every process: print it once
        return 1 if report.failed else 0
    for record in report.done:
        print(f"{Path(record.input).name}: prompts {record.prompts}, {record.timings['total']:.2f} s")
    for record in report.failed:  # one bad file does not stop the run
        print(f"{Path(record.input).name}: {record.error}")
    return 1 if report.failed else 0

if __name__ == "__main__":
    raise SystemExit(main())
