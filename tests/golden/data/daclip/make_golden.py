"""Generator of the DA-CLIP golden set (this folder): the official DA-CLIP code on tiny random weights.

    git clone https://github.com/Algolzw/daclip-uir /tmp/daclip_official/src
    git -C /tmp/daclip_official/src checkout c2cc14146faac85680b4cb39ece4ef9e2a7c7c24
    python tests/golden/data/daclip/make_golden.py --official-src /tmp/daclip_official/src

The official code is the ``open_clip`` fork in ``da-clip/src`` of that repository. It has the same import name
as the ``open_clip_torch`` package elqproj uses, so it runs in child processes whose ``PYTHONPATH`` puts the
fork first; nothing of it is copied here and elqproj never imports it. Steps:

1. ``--stage official`` (fork on the path, twice: 1 and 2 torch threads): registers the tiny model config
   ``daclip_tiny.json`` with ``open_clip.add_model_config``, builds ``open_clip.create_model("daclip_tiny")``
   (the fork's ``DaCLIP``), fills every parameter with seeded random values (the controller's zero-initialised
   projections too, so that the control path matters), saves a training-style checkpoint ``daclip_tiny.pt``,
   loads it back with ``open_clip.create_model_from_pretrained("daclip_tiny", pretrained=...)`` as the DA-CLIP
   README does, and records its outputs on the source images in ``cases.safetensors``.
2. ``--stage measure`` (elqproj's environment, 1 and 2 threads): loads ``daclip_tiny.pt`` through elqproj's
   public loader and prints the largest difference from every recorded tensor (the numbers in README.md).

One bridge, no model code edited: the fork's ``ControlTransformer.__init__`` calls ``.cuda()`` on its projections,
which fails on a machine without CUDA, so ``torch.nn.Module.cuda`` returns the module unchanged while the official
model is built. The README example's ``torch.cuda.amp.autocast()`` is left out: it does nothing on the CPU, and
the recorded outputs are float32.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMIT = "c2cc14146faac85680b4cb39ece4ef9e2a7c7c24"
MODEL_NAME = "daclip_tiny"  # the fork builds a DaCLIP for every model name that contains "daclip"

# The official JSON layout (model_configs/daclip_ViT-B-32.json), tiny: 48² input, patch 8 (6x6 grid + class
# token), 2 blocks of width 24 with 2 heads; a text tower of width 16, 2 heads, 2 blocks. The text tower keeps
# CLIP's 77-token context and 49408-token vocabulary: the official tokenizer emits ids up to 49407.
TINY_CONFIG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 48, "layers": 2, "width": 24, "patch_size": 8, "head_width": 12},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 2},
    "custom_text": True,
}
# The README example's degradation vocabulary, in its order.
DEGRADATIONS = ["motion-blurry", "hazy", "jpeg-compressed", "low-light", "noisy", "raindrop", "rainy", "shadowed",
                "snowy", "uncompleted"]
# A few entries of RAM's tag list (multi-word, digits, a hyphen) for the zero-shot tag scores.
TAGS = ["dog", "cat", "3D glasses", "zebra crossing", "tree", "sky", "t-shirt", "mountain"]
TEMPLATE = "a photo of a {}."
SEED = 2024


def _sources():
    """Deterministic RGB uint8 images (H, W, 3): two downscaled (one portrait), one upscaled."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    out = {}
    for name, (h, w) in {"src0": (90, 72), "src1": (52, 97), "src2": (30, 36)}.items():
        y, x = np.mgrid[0:h, 0:w] / max(h, w)
        smooth = np.stack([np.sin(6 * x + c) * np.cos(4 * y - c) for c in (0.0, 1.0, 2.0)], -1)
        noisy = 127.5 + 90 * smooth + rng.normal(0, 20, size=(h, w, 3))
        out[name] = np.clip(noisy, 0, 255).round().astype(np.uint8)
    return out


def _fill_random(model, generator) -> None:
    """Seeded random values for every parameter, scaled so that activations stay of order one."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("logit_scale"):
                param.fill_(4.6)  # ~log(100), a trained CLIP's value
            elif param.ndim == 1 and ("ln_" in name or "ln_final" in name) and name.endswith(".weight"):
                param.copy_(1.0 + 0.2 * noise)
            elif param.ndim == 1:
                param.copy_(0.2 * noise)  # biases, class embedding
            elif name.endswith(("proj", "text_projection")):
                param.copy_(noise / param.shape[0] ** 0.5)  # used as x @ proj: fan-in is the first dim
            elif "positional_embedding" in name:
                param.copy_(0.5 * noise)
            else:
                fan_in = param[0].numel()
                param.copy_(noise / fan_in ** 0.5)


def _overlapping_rows(vocab: int, width: int, generator):
    """A (vocab, width) view whose rows overlap (row i = line[i : i + width]) of one random line: torch.save
    stores the line, 49408 + width - 1 floats, instead of 49408 x width (0.2 MB instead of 3 MB). Loading into
    a model copies the values, so the layout is invisible to every loader."""
    import torch

    line = torch.randn(vocab + width - 1, generator=generator) / width ** 0.5
    return line.as_strided((vocab, width), (1, 1))


def official_stage(out: Path, threads: int, save: bool) -> None:
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    torch.set_num_threads(threads)
    import open_clip

    fork = Path(open_clip.__file__).resolve()
    if "da-clip" not in fork.parts:
        raise SystemExit(f"open_clip comes from {fork}, not DA-CLIP's fork: set PYTHONPATH to da-clip/src")
    config_path = out / f"{MODEL_NAME}.json"
    if save:
        config_path.write_text(json.dumps(TINY_CONFIG, indent=4) + "\n")
    open_clip.add_model_config(config_path)

    checkpoint = out / f"{MODEL_NAME}.pt"
    real_cuda = torch.nn.Module.cuda
    torch.nn.Module.cuda = lambda self, device=None: self  # the one bridge, see the module docstring
    try:
        if save:
            model = open_clip.create_model(MODEL_NAME)
            generator = torch.Generator().manual_seed(SEED)
            _fill_random(model, generator)
            model.lock_clip()  # as training does: only the controller (and its logit scale) is trained
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-5)
            state = model.state_dict()
            state["clip.token_embedding.weight"] = _overlapping_rows(*state["clip.token_embedding.weight"].shape,
                                                                     generator)
            # the layout of da-clip/src/training/main.py's saves (one process: no "module." prefix), with the
            # optimizer's state_dict as it is before its first step (no moment tensors: a small file)
            torch.save({"epoch": 1, "name": MODEL_NAME, "state_dict": state, "optimizer": optimizer.state_dict()},
                       checkpoint)
        model, preprocess = open_clip.create_model_from_pretrained(MODEL_NAME, pretrained=str(checkpoint))
    finally:
        torch.nn.Module.cuda = real_cuda
    model.eval()
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)

    sources = _sources()
    images = torch.stack([preprocess(Image.fromarray(array)) for array in sources.values()])
    degradation_tokens = tokenizer(DEGRADATIONS)
    tag_tokens = tokenizer([TEMPLATE.format(tag) for tag in TAGS])
    with torch.no_grad():
        image_features, degradation_features = model.encode_image(images, control=True)
        plain_image_features = model.encode_image(images)
        degradation_text_features = model.encode_text(degradation_tokens)
        tag_text_features = model.encode_text(tag_tokens)
        # the README's computation, on normalised copies
        degra = degradation_features / degradation_features.norm(dim=-1, keepdim=True)
        text = degradation_text_features / degradation_text_features.norm(dim=-1, keepdim=True)
        degradation_probs = (100.0 * degra @ text.T).softmax(dim=-1)
        content = image_features / image_features.norm(dim=-1, keepdim=True)
        tags = tag_text_features / tag_text_features.norm(dim=-1, keepdim=True)
        tag_scores = content @ tags.T
    tensors = {
        "images": images, "image_features": image_features, "degradation_features": degradation_features,
        "plain_image_features": plain_image_features, "degradation_tokens": degradation_tokens,
        "degradation_text_features": degradation_text_features, "degradation_probs": degradation_probs,
        "tag_tokens": tag_tokens, "tag_text_features": tag_text_features, "tag_scores": tag_scores,
        **{f"{name}_uint8": torch.from_numpy(array) for name, array in sources.items()},
    }
    tensors = {key: value.contiguous() for key, value in tensors.items()}
    name = "cases.safetensors" if save else f"cases_threads{threads}.safetensors"
    save_file(tensors, str(out / name))
    if save:
        import torchvision

        info = {
            "official": {"repository": "Algolzw/daclip-uir", "commit": COMMIT, "code": "da-clip/src/open_clip"},
            "model_name": MODEL_NAME, "config": TINY_CONFIG, "degradations": DEGRADATIONS, "tags": TAGS,
            "template": TEMPLATE, "seed": SEED, "sources": list(sources),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "torchvision": torchvision.__version__, "numpy": np.__version__,
                         "pillow": Image.__version__},
        }
        existing = out / "case.json"
        if existing.is_file():  # keep the tolerance measured for the previous run
            info["tolerance"] = json.loads(existing.read_text()).get("tolerance")
        existing.write_text(json.dumps(info, indent=2) + "\n")


def measure_stage(out: Path, threads: int) -> dict:
    """Largest |ours - official| per recorded tensor, ours through elqproj's public loader."""
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(threads)
    from elqproj.prompts import load_prompt_extractor
    from elqproj.prompts.daclip import daclip_pixel_values

    recorded = load_file(str(out / "cases.safetensors"))
    tagger = load_prompt_extractor("daclip", weights=out / f"{MODEL_NAME}.pt", tag_list=TAGS, template=TEMPLATE,
                                   degradations=DEGRADATIONS, device="cpu", progress=False)
    model = tagger.model
    sources = [recorded[f"{name}_uint8"].permute(2, 0, 1).float() / 255 for name in ("src0", "src1", "src2")]
    images = recorded["images"]
    result = tagger.extract_pixel_values(images)
    with torch.no_grad():
        ours = {
            "images": daclip_pixel_values(sources, model.config.image_size),
            "image_features": result.content_features,
            "degradation_features": result.degradation_features,
            "plain_image_features": model.encode_image(images, control=False),
            "degradation_tokens": model.tokenize(DEGRADATIONS),
            "degradation_text_features": model.encode_text(model.tokenize(DEGRADATIONS)),
            "degradation_probs": torch.tensor([list(row.values()) for row in result.degradations]),
            "tag_tokens": model.tokenize([TEMPLATE.format(tag) for tag in TAGS]),
            "tag_text_features": model.encode_text(model.tokenize([TEMPLATE.format(tag) for tag in TAGS])),
            "tag_scores": result.scores,
        }
    diffs = {key: float((value.double() - recorded[key].double()).abs().max()) for key, value in ours.items()}
    if threads == 1:  # for scale: float32's own rounding error, and what the order of the controls changes
        from elqproj.prompts.daclip_model import _embed_patches, _pooled

        wide = copy.deepcopy(model).double()
        with torch.no_grad():
            content, degradation = wide.encode_image(images.double(), control=True)
            tower, (_, controls) = wide.clip.visual, wide.controller(images.double())
            x = _embed_patches(tower, images.double())
            for block, added in zip(tower.transformer.resblocks, controls):
                x = block(x) + added
            in_block_order = _pooled(tower, x)
        diffs["float64: image_features"] = float((content - recorded["image_features"].double()).abs().max())
        diffs["float64: degradation_features"] = float((degradation - recorded["degradation_features"].double()).abs().max())
        diffs["controls in block order: image_features"] = float((in_block_order - recorded["image_features"]).abs().max())
        diffs["no control: image_features"] = float((recorded["plain_image_features"] - recorded["image_features"]).abs().max())
        ranked = recorded["tag_scores"].sort(dim=1, descending=True).values
        diffs["smallest gap between ranked tag_scores"] = float((ranked[:, :-1] - ranked[:, 1:]).min())
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official-src", type=Path, help="a checkout of Algolzw/daclip-uir")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--stage", choices=["all", "official", "measure"], default="all")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--check", action="store_true", help="official stage: record to a side file, do not save")
    args = parser.parse_args()
    if args.stage == "official":
        official_stage(args.out, args.threads, save=not args.check)
        return
    if args.stage == "measure":
        print(json.dumps(measure_stage(args.out, args.threads)))
        return
    if args.official_src is None:
        parser.error("--official-src is required")
    fork = args.official_src / "da-clip" / "src"
    env = {**os.environ, "PYTHONPATH": str(fork)}
    me = [sys.executable, str(Path(__file__).resolve()), "--out", str(args.out)]
    subprocess.run([*me, "--stage", "official", "--threads", "1"], env=env, check=True)
    subprocess.run([*me, "--stage", "official", "--threads", "2", "--check"], env=env, check=True)
    from safetensors.torch import load_file

    one, two = load_file(str(args.out / "cases.safetensors")), load_file(str(args.out / "cases_threads2.safetensors"))
    official_spread = max(float((one[k].double() - two[k].double()).abs().max()) for k in one)
    (args.out / "cases_threads2.safetensors").unlink()
    print(f"official, 1 vs 2 threads: max |diff| {official_spread:.3g}")
    repo = Path(__file__).resolve().parents[4]
    for threads in (1, 2):
        result = subprocess.run([*me, "--stage", "measure", "--threads", str(threads)], cwd=repo, check=True,
                                capture_output=True, text=True)
        diffs = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"ours vs official, {threads} thread(s): " + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items()))


if __name__ == "__main__":
    main()
