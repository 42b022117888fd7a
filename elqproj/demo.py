"""A local web page to restore an image and look at the result: ``elqproj demo`` (``pip install "elqproj[demo]"``).

Built on gradio. The page runs the package's :class:`~elqproj.pipeline.RestorationPipeline` (never restore
code of its own) on models loaded once at start and shared by every request: one projector f (or none),
the restorers g and prompt extractors Y given on the command line. Requests queue (one at a time by
default: one GPU); uploads above ``max_upload_mb`` are refused by the server, images above the pixel
budget by the pipeline, and every error reaches the page as its message, never as a stack trace.

The Batch tab restores many files with the same settings through :func:`elqproj.archive.restore_files` (a
bad file is reported in its row; the results and the manifest come back as a zip). Both buttons are API
endpoints for ``gradio_client`` (``"/restore"``, ``"/restore_batch"``)::

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    slider, lq, prompts, timings, download = client.predict(
        handle_file("photo.jpg"), "osediff", "none", "", "2", 0, 1, "official", "auto", api_name="/restore")
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from . import imageio
from .auto import describe_decision
from .errors import ConfigError, ElqprojError, InvalidInputError
from .pipeline import LFO_MAX, RestorationPipeline

__all__ = ["DemoModels", "build_demo", "COLOR_FIX_CHOICES", "LFO_CHOICES", "MODE_CHOICES", "PROMPT_NONE", "PROMPT_TEXT"]

logger = logging.getLogger(__name__)

#: Prompt modes besides the loaded extractors: no prompt, or the text typed in the page.
PROMPT_NONE, PROMPT_TEXT = "none", "text"
#: LFO choices of the page: a number of passes, or "auto" (stop when the tags stop changing).
LFO_CHOICES = [str(k) for k in range(LFO_MAX + 1)] + ["auto"]
#: Colour fix choices: the restorer's official one, or a fixed one.
COLOR_FIX_CHOICES = ["official", "adain", "wavelet", "none"]
TILING_CHOICES = ["auto", "always", "never"]
#: "fixed": the controls above; "auto": a no-reference score of each upload picks f, LFO and strength (elqproj.auto).
MODE_CHOICES = ["fixed", "auto"]


@dataclass
class DemoModels:
    """The models the page combines, loaded once: f (or ``None``), restorers and prompt extractors by name.

    :meth:`pipeline` gives the :class:`RestorationPipeline` of one combination, built once and reused.
    """

    restorers: dict[str, Any]
    projector: Any = None
    extractors: dict[str, Any] = field(default_factory=dict)
    _pipelines: dict[tuple[str, str, str], RestorationPipeline] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_pipeline(cls, pipeline: RestorationPipeline, *, backend: str, extractor: str | None = None) -> DemoModels:
        """The models of a loaded pipeline, its g under ``backend`` and its Y (if any) under ``extractor``."""
        extractors = {extractor: pipeline.prompt_extractor} if extractor and pipeline.prompt_extractor else {}
        return cls(restorers={backend: pipeline.restorer}, projector=pipeline.projector, extractors=extractors)

    @property
    def prompt_modes(self) -> list[str]:
        return [PROMPT_NONE, PROMPT_TEXT, *self.extractors]

    def pipeline(self, backend: str, prompt_mode: str, tiling: str = "auto") -> RestorationPipeline:
        """The pipeline of restorer ``backend``, extractor ``prompt_mode`` (or none) and ``tiling``.

        Raises:
            InvalidInputError: a restorer or prompt mode this page did not load.
            ConfigError: tiling asked of a restorer that cannot tile.
        """
        if backend not in self.restorers:
            raise InvalidInputError(f"The restorer {backend!r} is not loaded here; loaded: {sorted(self.restorers)}. "
                                    "Start the demo with --backend / --add-backend NAME=WEIGHTS.")
        if prompt_mode not in self.prompt_modes:
            raise InvalidInputError(f"The prompt mode {prompt_mode!r} is not available; choose one of {self.prompt_modes}.")
        if tiling not in TILING_CHOICES:
            raise InvalidInputError(f"tiling must be one of {TILING_CHOICES}, got {tiling!r}.")
        key = (backend, prompt_mode, tiling)
        with self._lock:
            if key not in self._pipelines:
                pipe = RestorationPipeline(self.restorers[backend], projector=self.projector,
                                           prompt_extractor=self.extractors.get(prompt_mode))
                if tiling != "auto":
                    from .tiling import TilingConfig

                    pipe.configure_tiling(TilingConfig(mode=tiling))
                self._pipelines[key] = pipe
            return self._pipelines[key]


@dataclass
class DemoDefaults:
    """What the page's controls show first and how it sizes images (from ``elqproj demo``'s options)."""

    lfo: str = "2"
    seed: int | None = 0
    upscale: int = 1
    prompt_text: str = ""
    process_size: int = 512
    max_pixels: int | None = None
    max_batch_files: int = 50


@dataclass(frozen=True)
class _Settings:
    """The controls of one request, checked: the pipeline to run and its call options."""

    pipeline: RestorationPipeline
    call: dict[str, Any]
    seed: int | None


def _settings(models: DemoModels, defaults: DemoDefaults, backend: str, prompt_mode: str, prompt_text: str,
              lfo: str, seed: float | None, upscale: float, color_fix: str, tiling: str, strength: float = 1.0,
              mode: str = "fixed") -> _Settings:
    """The page's controls -> the pipeline and its call options.

    Raises:
        InvalidInputError: a value the controls do not offer, or mode 'text' without a text.
    """
    if lfo not in LFO_CHOICES:
        raise InvalidInputError(f"LFO must be one of {LFO_CHOICES}, got {lfo!r}.")
    if mode not in MODE_CHOICES:
        raise InvalidInputError(f"mode must be one of {MODE_CHOICES}, got {mode!r}.")
    if mode == "auto" and models.projector is None:
        raise InvalidInputError("Auto mode chooses whether the projector runs, and this page has none: choose 'fixed'.")
    if color_fix not in COLOR_FIX_CHOICES:
        raise InvalidInputError(f"colour fix must be one of {COLOR_FIX_CHOICES}, got {color_fix!r}.")
    if prompt_mode == PROMPT_TEXT and not (prompt_text or "").strip():
        raise InvalidInputError("The prompt mode is 'text': type a prompt, or choose another mode.")
    call = {"prompt": prompt_text if prompt_mode == PROMPT_TEXT else None,
            "upscale": int(upscale), "process_size": defaults.process_size, "max_pixels": defaults.max_pixels,
            "restorer_options": {} if color_fix == "official" else {"color_fix": color_fix}}
    if mode == "auto":  # the severity of each image chooses LFO and strength
        call["mode"] = "auto"
    else:
        call.update(lfo=lfo if lfo == "auto" else int(lfo), strength=float(strength))
    return _Settings(models.pipeline(backend, prompt_mode, tiling), call,
                     None if seed is None or seed == "" else int(seed))


def restore_request(models: DemoModels, defaults: DemoDefaults, upload: str | None, backend: str, prompt_mode: str,
                    prompt_text: str, lfo: str, seed: float | None, upscale: float, color_fix: str, tiling: str,
                    strength: float = 1.0, mode: str = "fixed", *, output_dir: Path
                    ) -> tuple[tuple[Image.Image, Image.Image], Image.Image, str, str, str]:
    """One press of Restore: the uploaded file restored as the controls say.

    Returns:
        ``((input enlarged to the result's size, result), LQ proxy, prompt trace, timings table (Markdown;
        in auto mode headed by the decision), path of the full-resolution PNG)``.

    Raises:
        ElqprojError: anything wrong with the request or the file (the page shows the message).
    """
    if not upload:
        raise InvalidInputError("Upload an image first (or pick an example).")
    settings = _settings(models, defaults, backend, prompt_mode, prompt_text, lfo, seed, upscale, color_fix, tiling,
                         strength, mode)
    image = imageio.load_image(upload, max_pixels=defaults.max_pixels)
    result = settings.pipeline(image, seed=settings.seed, **settings.call)
    restored = _as_rgb(result.image)
    before = _as_rgb(image).resize(restored.size, Image.Resampling.BICUBIC)
    download = imageio.save_image(result.image, Path(tempfile.mkdtemp(dir=_made(output_dir))) /
                                  f"{Path(upload).stem}_restored.png")
    summary = timings_table(result.timings)
    if result.decision is not None:
        summary = f"**Auto mode:** {describe_decision(result.decision)}\n\n{summary}"
    return (before, restored), _as_rgb(result.lq), prompt_trace(result.prompts), summary, str(download)


def restore_batch_request(models: DemoModels, defaults: DemoDefaults, uploads: list[str] | None, backend: str,
                          prompt_mode: str, prompt_text: str, lfo: str, seed: float | None, upscale: float,
                          color_fix: str, tiling: str, strength: float = 1.0, mode: str = "fixed", *,
                          output_dir: Path) -> tuple[list[tuple[str, str]], list[list[Any]], str]:
    """The Batch tab's Restore all: every uploaded file through
    :func:`~elqproj.archive.restore_files` (a bad file is reported in the table, the others are restored;
    each image's seed derives from the seed and its file name, as in ``elqproj restore``).

    Returns:
        ``(gallery of (result path, file name), table rows [file, status, seconds, prompt or error],
        path of a zip of the results and manifest.jsonl)``.
    """
    from .archive import restore_files
    from .manifest import MANIFEST_NAME

    if not uploads:
        raise InvalidInputError("Upload one or more images first.")
    if len(uploads) > defaults.max_batch_files:
        raise InvalidInputError(f"{len(uploads)} files: this page restores at most {defaults.max_batch_files} at once; "
                                "use `elqproj restore` for a whole folder.")
    settings = _settings(models, defaults, backend, prompt_mode, prompt_text, lfo, seed, upscale, color_fix, tiling,
                         strength, mode)
    run = Path(tempfile.mkdtemp(dir=_made(output_dir), prefix="batch-"))
    sources = [Path(upload) for upload in uploads]
    names = [source.name for source in sources]
    if len(set(names)) != len(names):
        raise InvalidInputError("Two uploads have the same file name: rename one of them.")
    results = run / "restored"
    pairs = [(source, results / f"{source.stem}.png") for source in sources]
    report = restore_files(settings.pipeline, pairs, manifest=results / MANIFEST_NAME, seed=settings.seed,
                           num_workers=0, **settings.call)
    gallery, rows = [], []
    for source, target in pairs:
        record = report.records[str(source)]
        if record.status == "done":
            gallery.append((str(target), source.name))
            status = "done" if record.decision is None else f"done: {describe_decision(record.decision)}"
            rows.append([source.name, status, round(record.timings.get("total", 0.0), 3), record.prompts[-1]])
        else:
            rows.append([source.name, "failed", None, (record.error or "").replace(str(source), source.name)])
    archive = shutil.make_archive(str(run / "restored"), "zip", root_dir=results)
    return gallery, rows, archive


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _as_rgb(image: Any) -> Image.Image:
    """A PIL or 16-bit :class:`~elqproj.imageio.ImageArray` result as an 8-bit RGB picture for the page."""
    x, _ = imageio.to_tensor(image)
    return Image.fromarray((x[0].permute(1, 2, 0) * 255).round().clamp(0, 255).byte().numpy())


def prompt_trace(prompts: list[str]) -> str:
    """One line per pass: c¹ (Y on the input), each LFO pass, and the prompt g was conditioned on."""
    lines = [f"pass 1 (f, prompt from the input): {prompts[0]!r}"]
    lines += [f"pass {k} (f, LFO {k - 1}): {text!r}" for k, text in enumerate(prompts[1:-1], start=2)]
    lines.append(f"g (restorer): {prompts[-1]!r}")
    return "\n".join(lines)


def timings_table(timings: dict[str, float]) -> str:
    rows = "\n".join(f"| {stage} | {seconds:.3f} |" for stage, seconds in timings.items())
    return f"| stage | seconds |\n|---|---|\n{rows}"


def build_demo(models: DemoModels, *, defaults: DemoDefaults | None = None, examples: list[str] | None = None,
               output_dir: str | Path | None = None, title: str = "elqproj: extreme blind image restoration") -> Any:
    """The page as a ``gradio.Blocks``; launch it with :func:`launch_demo` (or ``.queue().launch()``).

    Args:
        models: the loaded models (:class:`DemoModels`).
        defaults: the controls' first values and the sizing (:class:`DemoDefaults`).
        examples: image files offered as examples under the upload.
        output_dir: where full-resolution results are written for download (default: a temporary folder).
    """
    gr = _gradio()
    defaults = defaults or DemoDefaults()
    out = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="elqproj-demo-"))

    def page_errors(handler):
        """Run ``handler``; any error reaches the page as its message (never a stack trace)."""
        def run(*inputs, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - gradio's way to ask for a bar
            uploads = inputs[0] if isinstance(inputs[0], list) else [inputs[0]] if inputs[0] else []
            try:
                return handler(models, defaults, *inputs, output_dir=out)
            except ElqprojError as exc:  # named by the uploaded files' names, not gradio's temporary copies
                message = str(exc)
                for upload in uploads:
                    message = message.replace(str(upload), Path(upload).name)
                raise gr.Error(message, duration=None, print_exception=False) from None
            except Exception as exc:  # noqa: BLE001 - the page shows a message; the log keeps the traceback
                logger.exception("restoration failed")
                raise gr.Error(f"Restoration failed ({type(exc).__name__}: {exc}); see the server log.",
                               duration=None, print_exception=False) from None
        return run

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"## {title}\nUpload an extremely degraded photo, choose the restorer and the prompt, press "
                    "**Restore**, then drag the slider to compare the input (left) with the result (right). The "
                    "**Batch** tab restores many files at once with the same settings.")
        with gr.Row():
            with gr.Column(scale=1):
                backend = gr.Dropdown(list(models.restorers), value=next(iter(models.restorers)), label="Restorer g",
                                      elem_id="backend")
                first_mode = PROMPT_TEXT if defaults.prompt_text else models.prompt_modes[-1] if models.extractors \
                    else PROMPT_NONE
                prompt_mode = gr.Dropdown(models.prompt_modes, value=first_mode, label="Prompt", elem_id="prompt-mode")
                prompt_text = gr.Textbox(value=defaults.prompt_text, label="Prompt text (mode 'text')",
                                         elem_id="prompt-text")
                with gr.Row():
                    lfo = gr.Dropdown(LFO_CHOICES, value=defaults.lfo, label="LFO passes",
                                      interactive=models.projector is not None, elem_id="lfo")
                    seed = gr.Number(value=defaults.seed, precision=0, label="Seed", elem_id="seed")
                    upscale = gr.Dropdown([1, 2, 4], value=defaults.upscale, label="Upscale", elem_id="upscale")
                with gr.Row():
                    color_fix = gr.Dropdown(COLOR_FIX_CHOICES, value="official", label="Colour fix",
                                            elem_id="color-fix")
                    tiling = gr.Dropdown(TILING_CHOICES, value="auto", label="Tiling", elem_id="tiling")
                strength = gr.Slider(0, 1, value=1.0, step=0.05, label="Strength of f",
                                     info="0: g gets the input unchanged; 1: the trained projector",
                                     interactive=models.projector is not None, elem_id="strength")
                mode = gr.Dropdown(MODE_CHOICES, value="fixed", label="Mode",
                                   info="auto: each image's severity (MUSIQ) picks f, LFO and strength",
                                   interactive=models.projector is not None, elem_id="mode")
            with gr.Column(scale=2):
                controls = [backend, prompt_mode, prompt_text, lfo, seed, upscale, color_fix, tiling, strength, mode]
                with gr.Tab("One image"):
                    upload = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="upload")
                    if examples:
                        gr.Examples(examples=[[str(p)] for p in examples], inputs=[upload], label="Examples")
                    run = gr.Button("Restore", variant="primary", elem_id="restore-button")
                    slider = gr.ImageSlider(label="Before / after", type="pil", format="png", elem_id="slider")
                    with gr.Row():
                        lq = gr.Image(label="LQ proxy (f's output, g's input)", type="pil", format="png",
                                      elem_id="lq")
                        download = gr.File(label="Result at full resolution", elem_id="download")
                    prompts = gr.Textbox(label="Prompt of every pass", lines=4, interactive=False, elem_id="prompts")
                    timings = gr.Markdown(elem_id="timings")
                with gr.Tab("Batch"):
                    uploads = gr.File(label=f"Images (at most {defaults.max_batch_files})", file_count="multiple",
                                      file_types=["image"], type="filepath", elem_id="batch-upload")
                    run_all = gr.Button("Restore all", variant="primary", elem_id="batch-button")
                    gallery = gr.Gallery(label="Results", elem_id="batch-gallery")
                    table = gr.Dataframe(headers=["file", "status", "seconds", "prompt of g / error"],
                                         interactive=False, elem_id="batch-table")
                    archive = gr.File(label="All results (zip, with manifest.jsonl)", elem_id="batch-zip")
        run.click(page_errors(restore_request), inputs=[upload, *controls],
                  outputs=[slider, lq, prompts, timings, download], api_name="restore")
        run_all.click(page_errors(restore_batch_request), inputs=[uploads, *controls],
                      outputs=[gallery, table, archive], api_name="restore_batch")
    return demo


def launch_demo(demo: Any, *, host: str = "127.0.0.1", port: int | None = 7860, max_upload_mb: float = 20,
                concurrency: int = 1, block: bool = True, **launch_options: Any) -> Any:
    """Serve ``demo`` on ``host:port`` with a request queue (``concurrency`` at a time: one per GPU) and an
    upload limit; ``block=False`` returns at once (the server runs in a thread; ``demo.close()`` stops it)."""
    gr = _gradio()
    if max_upload_mb <= 0 or concurrency < 1:
        raise InvalidInputError(f"max_upload_mb must be > 0 and concurrency >= 1, got {max_upload_mb}, {concurrency}.")
    demo.queue(default_concurrency_limit=concurrency)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],  # no web fonts: works offline
                              font_mono=["ui-monospace", "monospace"])
    return demo.launch(server_name=host, server_port=port, max_file_size=f"{max_upload_mb}mb",
                       prevent_thread_lock=not block, show_error=True, theme=theme, quiet=not block,
                       footer_links=["api"], **launch_options)


def _gradio() -> Any:
    # No usage reports to gradio's servers unless the user asks for them (the page also works offline).
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise ConfigError('The web demo needs gradio: pip install "elqproj[demo]".') from None
    return gradio
