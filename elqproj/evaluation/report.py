"""The evaluation's tables, plots and one-page HTML report (matplotlib draws the plots, off screen)."""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .data import EvalInputs, load_png

if TYPE_CHECKING:
    from .config import EvaluationConfig
    from .metrics import MetricSpec
    from .records import EvaluationResult, MethodFolder

__all__ = ["write_report", "summary_markdown", "best_methods"]

#: Decimals shown per metric, as the paper prints them.
DECIMALS = {"psnr": 2, "ssim": 4, "lpips": 4, "dists": 4, "fid": 2, "niqe": 4, "musiq": 2, "clipiqa": 4}


def _shown(name: str, value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{DECIMALS.get(name, 4)}f}"


def best_methods(rows: Sequence[Mapping[str, Any]], metrics: Sequence[MetricSpec]) -> dict[str, set[str]]:
    """metric name → the methods with the best value (ties all count; NaN never wins)."""
    best = {}
    for spec in metrics:
        values = [(row[spec.name], row["method"]) for row in rows
                  if spec.name in row and not math.isnan(row[spec.name])]
        if values:
            target = (min if spec.lower_better else max)(value for value, _ in values)
            best[spec.name] = {method for value, method in values if value == target}
    return best


def summary_markdown(rows: Sequence[Mapping[str, Any]], metrics: Sequence[MetricSpec]) -> str:
    """The summary as a Markdown table in the paper's column order, ↑/↓ in the headers, best in bold."""
    best = best_methods(rows, metrics)
    header = ["Method", *(spec.label for spec in metrics), "Images", "s/image"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["method"]]
        for spec in metrics:
            text = _shown(spec.name, row.get(spec.name, float("nan")))
            cells.append(f"**{text}**" if row["method"] in best.get(spec.name, ()) and len(rows) > 1 else text)
        cells += [str(row["images"]), f"{row['seconds_per_image']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed or opened
    import matplotlib.pyplot as plt

    return plt


def _bar_plot(path: Path, rows: Sequence[Mapping[str, Any]], metrics: Sequence[MetricSpec]) -> Path:
    """One panel per metric, one bar per method."""
    plt = _pyplot()
    columns = min(4, len(metrics))
    figure_rows = math.ceil(len(metrics) / columns)
    figure, axes = plt.subplots(figure_rows, columns, figsize=(3.2 * columns, 2.8 * figure_rows), squeeze=False)
    names = [row["method"] for row in rows]
    for axis, spec in zip(axes.flat, metrics):
        axis.bar(range(len(rows)), [row.get(spec.name, float("nan")) for row in rows], color="C0")
        axis.set_title(spec.label)
        axis.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=8)
    for axis in list(axes.flat)[len(metrics):]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _round_plot(path: Path, rounds: Mapping[str, Sequence[Mapping[str, Any]]], metrics: Sequence[MetricSpec]) -> Path:
    """Metric against LFO round k (the paper's Figure 10), one line per LFO method."""
    plt = _pyplot()
    columns = min(4, len(metrics))
    figure_rows = math.ceil(len(metrics) / columns)
    figure, axes = plt.subplots(figure_rows, columns, figsize=(3.2 * columns, 2.8 * figure_rows), squeeze=False)
    for axis, spec in zip(axes.flat, metrics):
        for label, series in rounds.items():
            axis.plot([row["round"] for row in series], [row.get(spec.name, float("nan")) for row in series],
                      marker="o", label=label)
        axis.set_title(spec.label)
        axis.set_xlabel("LFO round k")
        axis.xaxis.get_major_locator().set_params(integer=True)
    for axis in list(axes.flat)[len(metrics):]:
        axis.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _centre_crop(image: Any, size: int) -> Any:
    height, width = image.shape[-2:]
    size = min(size, height, width)
    top, left = (height - size) // 2, (width - size) // 2
    return image[0, :, top:top + size, left:left + size].permute(1, 2, 0).numpy()


def _contact_sheet(path: Path, inputs: EvalInputs, folders: Mapping[str, MethodFolder], crop: int,
                   images: int = 4) -> Path:
    """Centre crops, one row per image: ELQ input, the first projector method's LQ proxy, each method, GT."""
    plt = _pyplot()
    columns: list[tuple[str, Any]] = [("ELQ input", inputs.elq)]
    with_proxy = [(label, folder) for label, folder in folders.items() if folder.spec.projector is not None]
    if with_proxy:
        label, folder = with_proxy[0]
        columns.append((f"LQ proxy ({label})", folder.lq))
    columns += [(label, folder.hq) for label, folder in folders.items()]
    columns.append(("ground truth", inputs.hq))
    names = inputs.names[:images]
    figure, axes = plt.subplots(len(names), len(columns), figsize=(1.9 * len(columns), 1.9 * len(names) + 0.4),
                                squeeze=False)
    for row, name in enumerate(names):
        for column, (title, where) in enumerate(columns):
            axis = axes[row][column]
            axis.imshow(_centre_crop(load_png(where(name)), crop))
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(title, fontsize=8)
            if column == 0:
                axis.set_ylabel(name, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _html_table(rows: Sequence[Mapping[str, Any]], metrics: Sequence[MetricSpec]) -> str:
    best = best_methods(rows, metrics)
    head = "".join(f"<th>{html.escape(spec.label)}</th>" for spec in metrics)
    body = []
    for row in rows:
        cells = []
        for spec in metrics:
            text = html.escape(_shown(spec.name, row.get(spec.name, float("nan"))))
            cells.append(f"<td><b>{text}</b></td>" if row["method"] in best.get(spec.name, ()) and len(rows) > 1
                         else f"<td>{text}</td>")
        body.append(f"<tr><td>{html.escape(row['method'])}</td>{''.join(cells)}<td>{row['images']}</td>"
                    f"<td>{row['seconds_per_image']:.2f}</td></tr>")
    return (f"<table><tr><th>Method</th>{head}<th>Images</th><th>s/image</th></tr>{''.join(body)}</table>")


def _decisions_markdown(result: EvaluationResult) -> str:
    """Below the table: how often auto mode took each decision, per auto-mode method ("" without one)."""
    lines = [f"- {label}: " + ", ".join(f"{key} {count}" for key, count in counts.items())
             for label, counts in result.decisions.items()]
    return "\nAuto-mode decisions (images):\n\n" + "\n".join(lines) + "\n" if lines else ""


def _html_report(result: EvaluationResult, config: EvaluationConfig, plots: Mapping[str, Path],
                 complexity_md: str | None) -> str:
    settings = "".join(f"<li><b>{html.escape(spec.label)}</b>: {html.escape(result.settings[spec.name])}</li>"
                       for spec in result.metrics)
    methods = "".join(f"<li><b>{html.escape(spec.label)}</b>: <code>{html.escape(spec.model_dump_json())}</code></li>"
                      for spec in config.methods)
    figures = "".join(f"<h2>{html.escape(title)}</h2><img src=\"{path.relative_to(result.out).as_posix()}\" "
                      f"alt=\"{html.escape(title)}\">" for title, path in plots.items())
    complexity = (f"<h2>Complexity (Table 5)</h2><pre>{html.escape(complexity_md)}</pre>" if complexity_md else "")
    decisions = "".join(f"<li><b>{html.escape(label)}</b>: " + ", ".join(f"{html.escape(k)} {v}" for k, v in counts.items())
                        + "</li>" for label, counts in result.decisions.items())
    decisions = f"<h2>Auto-mode decisions (images)</h2><ul>{decisions}</ul>" if decisions else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>elqproj evaluation: {html.escape(str(config.data))}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child{{text-align:left}}img{{max-width:100%}}code{{font-size:85%}}</style></head><body>
<h1>Evaluation</h1>
<p>Test images: <code>{html.escape(str(config.data))}</code> ({result.summary[0]['images'] if result.summary else 0} images,
prepared at {config.size} px), degradation <code>{html.escape(json.dumps(config.degradation))}</code>, seed {config.seed}.
Inputs, outputs and per-image scores: <a href="per_image.csv">per_image.csv</a>, <a href="summary.json">summary.json</a>.</p>
<h2>Summary</h2>{_html_table(result.summary, result.metrics)}
{decisions}<h2>Metric settings</h2><ul>{settings}</ul>
<h2>Methods</h2><ul>{methods}</ul>
{figures}{complexity}
</body></html>
"""


def write_report(result: EvaluationResult, *, config: EvaluationConfig, inputs: EvalInputs,
                 folders: Mapping[str, MethodFolder], per_image: Sequence[Mapping[str, Any]],
                 complexity: Sequence[Any] | None, provenance: Mapping[str, str]) -> dict[str, Path]:
    """Write the tables, plots and ``report.html`` into ``result.out``; returns name → path."""
    out = result.out
    per_image_names = [spec.name for spec in result.metrics if spec.kind != "set"]
    all_names = [spec.name for spec in result.metrics]
    files = {
        "per_image.csv": _write_csv(out / "per_image.csv", [row for row in per_image if row["final"]],
                                    ["method", "image", *per_image_names]),
        "summary.csv": _write_csv(out / "summary.csv", result.summary,
                                  ["method", *all_names, "images", "seconds_per_image"]),
    }
    if result.rounds:
        files["per_round.csv"] = _write_csv(
            out / "per_round.csv", [row for row in per_image if folders[row["method"]].rounds > 1],
            ["method", "image", "round", *per_image_names])
    (out / "summary.md").write_text(summary_markdown(result.summary, result.metrics) + _decisions_markdown(result),
                                    encoding="utf-8")
    files["summary.md"] = out / "summary.md"
    (out / "summary.json").write_text(json.dumps({
        "metrics": {spec.name: {"label": spec.label, "lower_better": spec.lower_better, "kind": spec.kind,
                                "settings": result.settings[spec.name]} for spec in result.metrics},
        "config": config.model_dump(mode="json"),
        "versions": dict(provenance),
        "summary": result.summary,
        "rounds": result.rounds,
        "decisions": result.decisions,
    }, indent=2), encoding="utf-8")
    files["summary.json"] = out / "summary.json"
    plots_dir = out / "plots"
    plots_dir.mkdir(exist_ok=True)
    plots = {"Metrics per method": _bar_plot(plots_dir / "metrics_by_method.png", result.summary, result.metrics)}
    if result.rounds:
        plots["Metric per LFO round (Figure 10)"] = _round_plot(plots_dir / "metric_vs_round.png", result.rounds,
                                                                result.metrics)
    plots["Crops: ELQ, LQ proxy, each method, ground truth"] = _contact_sheet(
        plots_dir / "contact_sheet.png", inputs, folders, config.crop)
    files.update({path.name: path for path in plots.values()})
    complexity_md = None
    if complexity:
        from .complexity import complexity_markdown, complexity_rows

        rows = complexity_rows(complexity)
        files["complexity.csv"] = _write_csv(out / "complexity.csv", rows, list(rows[0]))
        complexity_md = complexity_markdown(complexity)
        (out / "complexity.md").write_text(complexity_md, encoding="utf-8")
        files["complexity.md"] = out / "complexity.md"
    (out / "report.html").write_text(_html_report(result, config, plots, complexity_md), encoding="utf-8")
    files["report.html"] = out / "report.html"
    return files
