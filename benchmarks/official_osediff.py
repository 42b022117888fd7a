"""The OSEDiff part of ``compare_official.py``: the official OSEDiff inference beside ours on one random
full-size checkpoint, CPU, fp32.

Official side: ``OSEDiff_test`` from github.com/cswry/OSEDiff at commit :data:`OSEDIFF_COMMIT`, downloaded as
the GitHub archive at benchmark time into ``<cache>/OSEDiff`` (or read from ``--official-dir``, an extracted
copy of that commit), with the library versions its ``requirements.txt`` pins (:data:`OFFICIAL_DEPS`,
installed by pip into ``<cache>/OSEDiff/deps`` and put first on that process's import path; torch is the
one installed, so both sides run the same torch build). Its files are not changed on disk; one bridge: the
class hard-codes the CUDA device (``"cuda"``, ``.cuda()``), which the worker replaces by the CPU in the
source text it compiles, as the golden vectors did. Nothing of it is kept in this repository or imported by
the package.

Our side: ``load_restorer("osediff", weights=..., base_model=...)``, and variants that show what stands in
the way of more speed: the LoRA merged into the base weights (``merge_lora=True``, peft's merge on the
restorer's own engine) and ``torch.channels_last`` weights.

Both load the same random SD2.1-base tree (the released configs, ``bench_onestep.py``'s) and one
``osediff.pkl`` in the official format (rank-4 LoRA on the official module lists, a fine-tuned ``conv_in``),
built once into ``--weights-dir``. Each side is one long-lived process; a round times one call of the
official process and one of ours on the same input, prompt and posterior seed, alternating which goes first;
the official process stays up while our variants take turns.

Run as a script, this module is one such worker process (``--side official|ours``), driven over a pipe.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

#: The commit of github.com/cswry/OSEDiff that the golden vectors and these notes were made with.
OSEDIFF_COMMIT = "fcc4f09c7ed66a9bc0ba9433940d76b343142426"
ARCHIVE_URL = "https://github.com/cswry/OSEDiff/archive/{commit}.zip"
#: The official requirements.txt pins diffusers, transformers and peft; tokenizers and huggingface_hub are
#: versions that transformers 4.28.1 and diffusers 0.25.0 import (newer hubs dropped what they use).
OFFICIAL_DEPS = ("diffusers==0.25.0", "transformers==4.28.1", "peft==0.9.0", "tokenizers==0.13.3",
                 "huggingface_hub==0.20.3")
#: What the model is told: the official prompt template with a tag string and the default empty user prompt.
PROMPT = "dog, gray, neckband, ,"
VARIANTS = ("ours", "merged", "channels-last", "merged+channels-last")
DEFAULT_VARIANTS = ("ours", "merged", "merged+channels-last")
#: test_osediff.py's defaults for the arguments OSEDiff_test reads (fp32 instead of its fp16 default: CPU).
OFFICIAL_ARGS = {"mixed_precision": "fp32", "merge_and_unload_lora": False, "vae_decoder_tiled_size": 224,
                 "vae_encoder_tiled_size": 1024, "latent_tiled_size": 96, "latent_tiled_overlap": 32}
RANK = 4


class OfficialUnavailable(Exception):
    """The official code (or the libraries it pins) cannot be had here; the message says what to do."""


# ----------------------------------------------------------------------------------------- official code
def official_code(cache: Path, official_dir: Path | None = None, *, url: str | None = None) -> Path:
    """The folder holding the official ``osediff.py``: ``official_dir`` (an extracted copy, or a folder with
    the archive's ``OSEDiff-<commit>`` inside), else the archive of :data:`OSEDIFF_COMMIT` downloaded once
    into ``cache``. Raises :class:`OfficialUnavailable` when neither works."""
    if official_dir is not None:
        for candidate in (official_dir, official_dir / f"OSEDiff-{OSEDIFF_COMMIT}"):
            if (candidate / "osediff.py").is_file():
                return candidate
        raise OfficialUnavailable(
            f"--official-dir {official_dir} holds no osediff.py: pass the folder of an extracted copy of "
            f"github.com/cswry/OSEDiff at commit {OSEDIFF_COMMIT} (the one with osediff.py and models/ in it).")
    code = cache / f"OSEDiff-{OSEDIFF_COMMIT}"
    if (code / "osediff.py").is_file():
        return code
    url = url or ARCHIVE_URL.format(commit=OSEDIFF_COMMIT)
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"{OSEDIFF_COMMIT}.zip"
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
            shutil.copyfileobj(response, out)
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(cache)
    except (OSError, urllib.error.URLError, zipfile.BadZipFile) as exc:
        archive.unlink(missing_ok=True)
        raise OfficialUnavailable(
            f"Could not download the official OSEDiff code from {url} ({exc}). This benchmark needs it: run it "
            f"where GitHub can be reached, or download that archive elsewhere, extract it and pass "
            f"--official-dir PATH (the extracted OSEDiff-{OSEDIFF_COMMIT} folder).") from exc
    if not (code / "osediff.py").is_file():
        raise OfficialUnavailable(f"The archive from {url} has no OSEDiff-{OSEDIFF_COMMIT}/osediff.py.")
    return code


def official_deps(cache: Path) -> Path:
    """A folder with the library versions the official code pins, installed by pip once into ``cache``."""
    marker = cache / ".complete"
    if marker.exists() and marker.read_text() == " ".join(OFFICIAL_DEPS):
        return cache
    shutil.rmtree(cache, ignore_errors=True)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(cache),
                           *OFFICIAL_DEPS], capture_output=True, text=True, check=False)
    if done.returncode:
        raise OfficialUnavailable(
            f"Could not install the library versions the official OSEDiff code pins ({', '.join(OFFICIAL_DEPS)}) "
            f"into {cache}: pip said\n{done.stderr.strip()[-2000:]}")
    marker.write_text(" ".join(OFFICIAL_DEPS))
    return cache


# ------------------------------------------------------------------------------ random full-size weights
def official_lora_targets(unet, vae) -> dict[str, list[str]]:
    """The four module lists of ``osediff.pkl``, selected from the parameter names by the official rule
    (see shared/research/osediff.md, "Target-module selection"): the VAE list keeps its duplicates."""
    vae_patterns = ["conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "to_k", "to_q", "to_v",
                    "to_out.0"]
    unet_patterns = ["to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut",
                     "conv_out", "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj"]
    vae_list: list[str] = []
    for name, _ in vae.named_parameters():
        if "bias" in name or "norm" in name:
            continue
        for pattern in vae_patterns:  # every pattern adds the module once more (quant_conv: every one)
            if (pattern in name and "encoder" in name) or ("quant_conv" in name and "post_quant_conv" not in name):
                vae_list.append(name.removesuffix(".weight"))
    lists: dict[str, list[str]] = {"unet_lora_encoder_modules": [], "unet_lora_decoder_modules": [],
                                   "unet_lora_others_modules": []}
    for name, _ in unet.named_parameters():
        if "bias" in name or "norm" in name or not any(p in name for p in unet_patterns):
            continue
        if "down_blocks" in name or "conv_in" in name:
            key = "unet_lora_encoder_modules"
        elif "up_blocks" in name or "conv_out" in name:
            key = "unet_lora_decoder_modules"
        else:
            key = "unet_lora_others_modules"
        lists[key].append(name.removesuffix(".weight"))
    return {"vae_lora_encoder_modules": vae_list, **lists}


def _lora_tensors(model, modules: list[str], adapter: str, generator) -> dict[str, Any]:
    """Random rank-4 peft LoRA tensors for ``modules`` of ``model`` (Linear: A [r,in], B [out,r]; Conv2d: A a
    conv with the base kernel [r,in,k,k], B 1x1 [out,r,1,1]), A ~ N(0, 1/fan_in), B ~ N(0, 0.02²): non-zero, so
    that the LoRA's numerics count, and small enough to keep activations in range."""
    import torch

    tensors = {}
    for name in dict.fromkeys(modules):
        layer = model.get_submodule(name)
        if isinstance(layer, torch.nn.Conv2d):
            a_shape, b_shape = (RANK, layer.in_channels, *layer.kernel_size), (layer.out_channels, RANK, 1, 1)
        else:
            a_shape, b_shape = (RANK, layer.in_features), (layer.out_features, RANK)
        fan_in = 1
        for dim in a_shape[1:]:
            fan_in *= dim
        tensors[f"{name}.lora_A.{adapter}.weight"] = torch.randn(a_shape, generator=generator) / fan_in ** 0.5
        tensors[f"{name}.lora_B.{adapter}.weight"] = torch.randn(b_shape, generator=generator) * 0.02
    return tensors


def random_checkpoint(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """``(tree, pkl)``: a random SD2.1-base diffusers tree at the released sizes and an ``osediff.pkl`` for
    it in the official format, built once under ``root`` (about 5 GB; nothing is downloaded)."""
    tree = root / f"random-sd21-base-seed{seed}"
    pkl = tree / "osediff.pkl"
    if (tree / ".complete").exists():
        return tree, pkl
    import torch
    from bench_onestep import SD21_TEXT, SD21_UNET, SD21_VAE  # same folder
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    shutil.rmtree(tree, ignore_errors=True)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SD21_UNET)
    unet.save_pretrained(tree / "unet")
    vae = AutoencoderKL(**SD21_VAE)
    vae.save_pretrained(tree / "vae")
    text = CLIPTextModel(CLIPTextConfig(**SD21_TEXT))
    text.config.save_pretrained(tree / "text_encoder")
    # transformers 4.28.1 (the official pin) reads the "text_model." prefix that 5.x leaves out; both read it
    state = {k if k.startswith("text_model.") else f"text_model.{k}": v.contiguous() for k, v in text.state_dict().items()}
    save_file(state, str(tree / "text_encoder" / "model.safetensors"), metadata={"format": "pt"})
    del text, state
    # same length (77) and special tokens as SD2.1's CLIP tokenizer; its ids stay inside the real vocabulary
    tokenizer = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "tiny-sd21" / "tokenizer"
    shutil.copytree(tokenizer, tree / "tokenizer", copy_function=shutil.copyfile)  # files only, not read-only modes
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                  clip_sample=False).save_pretrained(tree / "scheduler")
    lists = official_lora_targets(unet, vae)
    generator = torch.Generator().manual_seed(seed + 1)
    state_unet: dict[str, Any] = {}
    for key, adapter in (("unet_lora_encoder_modules", "default_encoder"), ("unet_lora_decoder_modules", "default_decoder"),
                         ("unet_lora_others_modules", "default_others")):
        state_unet |= _lora_tensors(unet, lists[key], adapter, generator)
    # conv_in is fully fine-tuned in OSEDiff: stored under peft's wrapped name
    state_unet["conv_in.base_layer.weight"] = unet.conv_in.weight.detach() + 0.02 * torch.randn(
        unet.conv_in.weight.shape, generator=generator)
    state_unet["conv_in.base_layer.bias"] = unet.conv_in.bias.detach() + 0.02 * torch.randn(
        unet.conv_in.bias.shape, generator=generator)
    state_vae = _lora_tensors(vae, lists["vae_lora_encoder_modules"], "default_encoder", generator)
    torch.save({**lists, "rank_unet": RANK, "rank_vae": RANK, "state_dict_unet": state_unet, "state_dict_vae": state_vae},
               pkl)
    (tree / ".complete").write_text("ok")
    return tree, pkl


# ------------------------------------------------------------------------------------------------ workers
def _reset_peak_rss() -> None:
    try:  # Linux: "5" resets VmHWM, the peak resident set size
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        pass


def _peak_rss_gib() -> float:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _official_model(code: Path, deps: Path, tree: Path, pkl: Path):
    """``OSEDiff_test`` built as test_osediff.py builds it, from the official files, on the CPU."""
    sys.path[:0] = [str(deps), str(code)]
    os.chdir(code)  # osediff.py puts the working directory on its import path
    import types

    source = (code / "osediff.py").read_text()
    # the one bridge: its hard-coded CUDA device, as in the golden vectors' run
    bridged = source.replace('"cuda"', '"cpu"').replace(".cuda()", ".cpu()")
    if bridged == source:
        raise OfficialUnavailable(f"{code / 'osediff.py'} has no hard-coded CUDA device: not the expected commit.")
    module = types.ModuleType("osediff")
    module.__file__ = str(code / "osediff.py")
    sys.modules["osediff"] = module
    exec(compile(bridged, module.__file__, "exec"), module.__dict__)  # noqa: S102  (the official module, bridged)
    args = argparse.Namespace(pretrained_model_name_or_path=str(tree), osediff_path=str(pkl), **OFFICIAL_ARGS)
    model = module.OSEDiff_test(args)

    def call(lq, seed):
        import torch

        torch.manual_seed(seed)  # the posterior sample draws from the global RNG
        return model(lq, PROMPT)

    import diffusers
    import peft
    import transformers

    versions = {"diffusers": diffusers.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    return call, {"unet": model.unet, "vae": model.vae, "text_encoder": model.text_encoder}, versions


def _our_model(variant: str, tree: Path, pkl: Path):
    import diffusers
    import peft
    import torch
    import transformers

    from elqproj import load_restorer

    restorer = load_restorer("osediff", weights=str(pkl), base_model=str(tree), device="cpu", dtype=torch.float32,
                             merge_lora="merged" in variant)
    engine = restorer.engine
    if "channels-last" in variant:
        engine.unet.to(memory_format=torch.channels_last)
        engine.vae.to(memory_format=torch.channels_last)

    def call(lq, seed):
        engine.prompt_encoder.clear()  # the official forward encodes the prompt at every call: same work
        return restorer.restore_batch(lq, prompts=[PROMPT], seed=seed)

    versions = {"diffusers": diffusers.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    return call, {"unet": engine.unet, "vae": engine.vae, "text_encoder": engine.text_encoder}, versions


def profile_call(call, modules: dict, lq, seed: int, top: int = 12) -> dict:
    """Where one call's time goes: inclusive seconds of module groups (forward hooks) and torch's top
    operators by self CPU time. The LoRA cost is each peft LoRA layer's time minus its base layer's."""
    from torch.profiler import ProfilerActivity, profile

    totals: dict[str, float] = {}
    starts: dict[int, list[float]] = {}
    handles = []

    def watch(module, group: str, sign: float = 1.0) -> None:
        def pre(mod, _):
            starts.setdefault(id(mod), []).append(time.perf_counter())

        def post(mod, _, __):
            totals[group] = totals.get(group, 0.0) + sign * (time.perf_counter() - starts[id(mod)].pop())

        handles.extend([module.register_forward_pre_hook(pre), module.register_forward_hook(post)])

    unet, vae = modules["unet"], modules["vae"]
    watch(modules["text_encoder"], "text encoder")
    watch(vae.encoder, "VAE encoder")
    watch(vae.decoder, "VAE decoder")
    watch(unet, "UNet")
    for name, module in unet.named_modules():
        kind = type(module).__name__
        if kind == "Attention":
            watch(module, "UNet attention blocks (incl. projections)")
        elif kind == "ResnetBlock2D":
            watch(module, "UNet resnet blocks")
        elif hasattr(module, "lora_A") and hasattr(module, "base_layer"):  # a peft LoRA layer
            watch(module, "UNet LoRA (layer time minus base layer)")
            watch(module.base_layer, "UNet LoRA (layer time minus base layer)", -1.0)
    for name, module in vae.encoder.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer"):
            watch(module, "VAE encoder LoRA (layer time minus base layer)")
            watch(module.base_layer, "VAE encoder LoRA (layer time minus base layer)", -1.0)
    start = time.perf_counter()
    call(lq, seed)
    total = time.perf_counter() - start
    for handle in handles:
        handle.remove()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call(lq, seed)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    all_self = sum(e.self_cpu_time_total for e in ops) or 1.0
    return {"total_s": round(total, 3), "groups_s": {k: round(v, 3) for k, v in totals.items()},
            "top_ops": [{"op": e.key, "self_s": round(e.self_cpu_time_total / 1e6, 3),
                         "share": round(e.self_cpu_time_total / all_self, 3), "calls": e.count} for e in ops[:top]]}


def worker(argv: list[str]) -> None:
    """One side as a long-lived process: loads the model, then answers one JSON command per stdin line
    (``{"size", "seed", "input", "save", "profile"}`` or ``{"quit": true}``) with one JSON line on the
    original stdout; anything the models print goes to stderr."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=["official", "ours"], required=True)
    parser.add_argument("--variant", default="ours")
    parser.add_argument("--code", type=Path)
    parser.add_argument("--deps", type=Path)
    parser.add_argument("--tree", type=Path, required=True)
    parser.add_argument("--pkl", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the official code prints at every call; keep the protocol stream clean
    sys.stdout = sys.stderr
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.side == "official":
        call, modules, versions = _official_model(args.code, args.deps, args.tree, args.pkl)
    else:
        call, modules, versions = _our_model(args.variant, args.tree, args.pkl)
    load_peak = _peak_rss_gib()
    print(json.dumps({"ready": True, "load_s": round(time.perf_counter() - start, 1), "load_peak_rss_gib": round(load_peak, 2),
                      "torch": torch.__version__, **versions}), file=reply, flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("quit"):
            break
        lq = torch.load(command["input"])
        with torch.no_grad():
            if command.get("profile"):
                print(json.dumps(profile_call(call, modules, lq, command["seed"])), file=reply, flush=True)
                continue
            _reset_peak_rss()
            start = time.perf_counter()
            out = call(lq, command["seed"])
            seconds = time.perf_counter() - start
        if command.get("save"):
            torch.save(out.detach().float().contiguous(), command["save"])
        print(json.dumps({"seconds": seconds, "peak_rss_gib": round(_peak_rss_gib(), 2)}), file=reply, flush=True)


# ------------------------------------------------------------------------------------------------- driver
class Side:
    """A worker process and what it answered."""

    def __init__(self, label: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.label, self.log = label, log
        with open(log, "w") as stderr:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen([sys.executable, __file__, *argv], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        self.info = self._read()
        self.warm: set[int] = set()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            tail = "\n".join(self.log.read_text().strip().splitlines()[-25:])
            raise RuntimeError(f"the {self.label} process stopped (log {self.log}):\n{tail}")
        return json.loads(line)

    def ask(self, **command: Any) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"quit": True}) + "\n")
            self.process.stdin.close()
            self.process.wait(timeout=120)


def _max_abs_diff(a: Path, b: Path) -> dict:
    import torch

    x, y = torch.load(a), torch.load(b)
    saturated = ((x.abs() >= 1) & (y.abs() >= 1)).float().mean().item()
    return {"max_abs_diff": float((x - y).abs().max()), "within_golden_tolerance": bool(torch.allclose(y, x, rtol=1e-4, atol=1e-4)),
            "share_clamped_both": round(saturated, 3)}


def _spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def run(args: argparse.Namespace) -> list[dict]:
    """The whole OSEDiff comparison; prints one JSON row per variant and size, then a Markdown table."""
    import torch

    cache = Path(args.cache_dir)
    code = official_code(cache / "OSEDiff", args.official_dir)
    deps = official_deps(cache / "OSEDiff" / "deps")
    print(f"# official code: {code}; its pinned libraries: {deps}", flush=True)
    tree, pkl = random_checkpoint(Path(args.weights_dir), args.seed)
    print(f"# random SD2.1-base tree and osediff.pkl: {tree}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="osediff-compare-"))
    from elqproj.benchmarking import synthetic_images

    inputs = {}
    for size in args.sizes:
        inputs[size] = work / f"input_{size}.pt"
        torch.save(synthetic_images(size, seed=args.seed) * 2 - 1, inputs[size])  # [-1, 1], as OSEDiff_test takes it
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(cache / "OSEDiff" / "hf"),
           "OMP_NUM_THREADS": str(args.threads)}
    common = ["--tree", str(tree), "--pkl", str(pkl), "--threads", str(args.threads)]
    official = Side("official", ["--side", "official", "--code", str(code), "--deps", str(deps), *common],
                    work / "official.log", env)
    print(f"# official process: {json.dumps(official.info)}", flush=True)
    rows, profiles = [], {}
    try:
        for variant in args.variants:
            ours = Side(variant, ["--side", "ours", "--variant", variant, *common], work / f"{variant}.log", env)
            print(f"# {variant} process: {json.dumps(ours.info)}", flush=True)
            for size in args.sizes:
                for side in (official, ours):
                    if size not in side.warm:
                        side.ask(size=size, seed=args.seed, input=str(inputs[size]))  # warm-up, untimed
                        side.warm.add(size)
                times: dict[str, list[float]] = {"official": [], "ours": []}
                peaks: dict[str, float] = {"official": 0.0, "ours": 0.0}
                saved = {"official": work / f"official_{size}.pt", "ours": work / f"{variant}_{size}.pt"}
                for round_ in range(args.rounds):
                    order = [("official", official), ("ours", ours)]
                    for name, side in order if round_ % 2 == 0 else order[::-1]:
                        answer = side.ask(size=size, seed=args.seed + round_, input=str(inputs[size]),
                                          save=str(saved[name]) if round_ == 0 else None)
                        times[name].append(answer["seconds"])
                        peaks[name] = max(peaks[name], answer["peak_rss_gib"])
                speedups = [o / u for o, u in zip(times["official"], times["ours"])]
                row = {"variant": variant, "size": size, "rounds": args.rounds, "threads": args.threads,
                       "official_s": [round(t, 2) for t in times["official"]], "ours_s": [round(t, 2) for t in times["ours"]],
                       "speedup_per_round": [round(s, 2) for s in speedups], "speedup": _spread(speedups),
                       # best of the rounds on each side: what a quiet machine gives when others load it in bursts
                       "speedup_best": round(min(times["official"]) / min(times["ours"]), 2),
                       "official_median_s": round(statistics.median(times["official"]), 2),
                       "ours_median_s": round(statistics.median(times["ours"]), 2),
                       "official_peak_rss_gib": peaks["official"], "ours_peak_rss_gib": peaks["ours"],
                       "official_load_peak_rss_gib": official.info["load_peak_rss_gib"],
                       "ours_load_peak_rss_gib": ours.info["load_peak_rss_gib"],
                       **_max_abs_diff(saved["official"], saved["ours"])}
                rows.append(row)
                print(json.dumps(row), flush=True)
            if args.profile and variant in ("ours", "merged"):
                size = args.sizes[0]
                profiles[variant] = ours.ask(size=size, seed=args.seed, input=str(inputs[size]), profile=True)
                if "official" not in profiles:
                    profiles["official"] = official.ask(size=size, seed=args.seed, input=str(inputs[size]), profile=True)
            ours.close()
    finally:
        official.close()
    if profiles:
        print(json.dumps({"profile_size": args.sizes[0], **profiles}, indent=1), flush=True)
    print(markdown_table(rows), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "profiles": profiles, "official": official.info}, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = [("| variant | size | rounds | official s: median (best) | ours s: median (best) "
              "| speed-up, paired rounds: median (range) | speed-up, best vs best | peak RSS official / ours GiB "
              "| max abs diff |"), "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        s = r["speedup"]
        lines.append(f"| {r['variant']} | {r['size']}² | {r['rounds']} | {r['official_median_s']} ({min(r['official_s'])}) "
                     f"| {r['ours_median_s']} ({min(r['ours_s'])}) | **{s['median']}×** ({s['min']}–{s['max']}) "
                     f"| {r['speedup_best']}× | {r['official_peak_rss_gib']} / {r['ours_peak_rss_gib']} | {r['max_abs_diff']:.1e} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="model input sides (px), multiples of 64")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(DEFAULT_VARIANTS),
                        help="our configurations, each timed against the official code in its own rounds")
    parser.add_argument("--profile", action="store_true", help="also profile one call of each side at the first size")
    parser.add_argument("--official-dir", type=Path, default=None,
                        help="an extracted copy of the official repository at the pinned commit (default: download it)")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "elqproj-bench" / "official",
                        help="where the official code and its pinned libraries are kept (default: %(default)s)")
    parser.add_argument("--weights-dir", type=Path, default=Path.home() / ".cache" / "elqproj-bench" / "osediff-random",
                        help="where the random SD2.1-base tree and osediff.pkl are built once (about 5 GB)")
    parser.add_argument("--json", type=Path, default=None, help="also write rows and profiles to this file")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    for size in args.sizes:
        if size < 64 or size % 64:
            parser.error(f"--sizes must be multiples of 64 of at least 64 px (the UNet's smallest input), got {size}")


if __name__ == "__main__":
    worker(sys.argv[1:])
