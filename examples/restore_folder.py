"""Restore every image of a folder with a projector (f), a restorer (g) and a prompt extractor (Y).

    python examples/restore_folder.py photos/ restored/ --projector ./my-projector --backend osediff \
        --prompt-extractor ram --lfo 2 --seed 0

One RestorationPipeline holds the models, loaded once; each image is restored and written atomically as PNG.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm.auto import tqdm

from elqproj import ElqprojError, RestorationPipeline
from elqproj.imageio import expand_image_paths, load_image, save_image


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
    args = parser.parse_args(argv)

    pipeline = RestorationPipeline.from_components(
        projector=args.projector, projector_options={"base_model": args.base_model} if args.base_model else None,
        restorer=args.backend, restorer_options={"weights": args.backend_weights} if args.backend_weights else None,
        prompt_extractor=args.prompt_extractor,
        prompt_extractor_options={"weights": args.prompt_weights} if args.prompt_weights else None,
        device=args.device, dtype=args.dtype,
    )
    out_dir = Path(args.output_dir)
    failed = 0
    for path in tqdm(expand_image_paths([args.input_dir]), unit="img"):
        try:
            image = load_image(path)
            result = pipeline(image, prompt=args.prompt, lfo=args.lfo, seed=args.seed, process_size=args.process_size)
            save_image(result.image, out_dir / f"{path.stem}.png")
            tqdm.write(f"{path.name}: prompts {result.prompts}, {result.timings['total']:.2f} s")
        except ElqprojError as exc:  # one bad file does not stop the batch
            failed += 1
            tqdm.write(f"{path.name}: {exc}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
