"""`elqproj evaluate` end to end on tiny images: inputs made once, every output file, tables equal to the
per-image means, resume after a kill, and the same ELQ bytes for the same seed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from elqproj.cli import main
from elqproj.errors import ConfigError
from elqproj.evaluation import evaluate, load_evaluation_config, parse_method
from elqproj.evaluation.data import open_dataset, prepare_hq
from elqproj.evaluation.methods import MethodSpec, method_slug
from tests.conftest import OSEDIFF_GOLDEN_PKL, TINY_SD21

SIZE = 64
#: The ELQ preset with milder down-scales: its own (to 0.1×, then 8×) would leave a few pixels of a 64 px image.
ELQ = {"preset": "elq", "final_scale": [2, 4], "stage1": {"resize": {"range": [0.5, 1.5]}},
       "stage2": {"resize": {"range": [0.5, 1.2]}}}


def _photos(folder: Path, count: int = 4) -> Path:
    """Smooth colour gradients with a little texture (80×72), so that the ELQ degradation has work to do."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:72, 0:80] / 80.0
    for index in range(count):
        image = np.stack([x * (index + 1) % 1, y, (x + y) / 2], axis=-1) + rng.normal(0, 0.05, (72, 80, 3))
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(folder / f"photo{index}.png")
    return folder


def _methods(projector_dir: Path) -> list[str]:
    g = f"osediff,weights={OSEDIFF_GOLDEN_PKL},base_model={TINY_SD21},process_size={SIZE}"
    return [f"{g},name=OSEDiff", f"projector={projector_dir},{g},lfo=1,prompt=a photo,name=Ours LFO×1"]


def _config(tmp_path: Path, projector_dir: Path, **overrides):
    settings = dict(data=str(_photos(tmp_path / "photos")), size=SIZE, seed=0, degradation=ELQ,
                    methods=_methods(projector_dir), metrics=["psnr", "ssim"], out=str(tmp_path / "eval"), device="cpu")
    return load_evaluation_config(**(settings | overrides))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, projector_dir):
    """One whole run (two methods, four images), shared by the checks on its files."""
    tmp_path = tmp_path_factory.mktemp("evaluate")
    return evaluate(_config(tmp_path, projector_dir), progress=False)


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_evaluate_writes_inputs_outputs_tables_plots_and_report(finished):
    out = finished.out
    names = [f"photo{i}" for i in range(4)]
    for name in names:
        assert (out / "inputs" / "hq" / f"{name}.png").is_file()
        assert Image.open(out / "inputs" / "elq" / f"{name}.png").size == (SIZE, SIZE)
        assert "params" in json.loads((out / "inputs" / "elq" / f"{name}.json").read_text())
        assert (out / "methods" / "osediff" / "hq" / f"{name}.png").is_file()
        ours = out / "methods" / method_slug("Ours LFO×1")
        assert (ours / "lq" / f"{name}.png").is_file()
        for k in (0, 1):
            assert (ours / "rounds" / str(k) / "hq" / f"{name}.png").is_file()
            assert (ours / "rounds" / str(k) / "lq" / f"{name}.png").is_file()
    for file in ("per_image.csv", "per_round.csv", "summary.csv", "summary.md", "summary.json", "report.html",
                 "plots/metrics_by_method.png", "plots/metric_vs_round.png", "plots/contact_sheet.png"):
        assert (out / file).is_file(), file
    report = (out / "report.html").read_text()
    assert 'src="plots/contact_sheet.png"' in report and "PSNR" in report


def test_summary_is_the_mean_of_the_per_image_rows(finished):
    rows = _csv(finished.out / "per_image.csv")
    summary = {row["method"]: row for row in _csv(finished.out / "summary.csv")}
    assert {row["method"] for row in rows} == set(summary) == {"OSEDiff", "Ours LFO×1"}
    for method, row in summary.items():
        mine = [r for r in rows if r["method"] == method]
        assert len(mine) == 4 and row["images"] == "4"
        for metric in ("psnr", "ssim"):
            assert float(row[metric]) == pytest.approx(np.mean([float(r[metric]) for r in mine]), rel=1e-9)


def test_last_round_of_an_lfo_method_is_its_result(finished):
    rounds = _csv(finished.out / "per_round.csv")
    final = {(r["method"], r["image"]): r for r in _csv(finished.out / "per_image.csv")}
    last = [r for r in rounds if r["round"] == "1"]
    assert len(last) == 4 and {r["method"] for r in rounds} == {"Ours LFO×1"}
    for row in last:
        assert row["psnr"] == final[(row["method"], row["image"])]["psnr"]
    ours = finished.out / "methods" / method_slug("Ours LFO×1")
    for name in ("photo0", "photo3"):
        assert (ours / "hq" / f"{name}.png").read_bytes() == (ours / "rounds" / "1" / "hq" / f"{name}.png").read_bytes()


def test_summary_markdown_has_arrows_and_bold_best(finished):
    text = (finished.out / "summary.md").read_text()
    assert text.splitlines()[0].startswith("| Method | PSNR↑ | SSIM↑ |")
    best = max(finished.summary, key=lambda row: row["psnr"])
    assert f"**{best['psnr']:.2f}**" in text
    recorded = json.loads((finished.out / "summary.json").read_text())
    assert set(recorded["metrics"]) == {"psnr", "ssim"} and "Y" in recorded["metrics"]["psnr"]["settings"]


def test_same_seed_gives_the_same_elq_bytes_and_another_seed_is_refused_in_the_same_folder(tmp_path, projector_dir):
    config = _config(tmp_path, projector_dir, methods=[f"osediff,weights={OSEDIFF_GOLDEN_PKL},base_model={TINY_SD21}"])
    from elqproj.evaluation.data import synthesize_inputs
    from elqproj.training.data import degradation_config

    elq = degradation_config(ELQ)

    images = open_dataset(config.data)
    first = synthesize_inputs(images, tmp_path / "a", degradation=elq, seed=3, size=SIZE, progress=False)
    again = synthesize_inputs(images, tmp_path / "b", degradation=elq, seed=3, size=SIZE, progress=False)
    for name in first:
        assert first.elq(name).read_bytes() == again.elq(name).read_bytes()
        assert first.hq(name).read_bytes() == again.hq(name).read_bytes()
    other = synthesize_inputs(images, tmp_path / "c", degradation=elq, seed=4, size=SIZE, progress=False)
    assert any(first.elq(n).read_bytes() != other.elq(n).read_bytes() for n in first)
    with pytest.raises(ConfigError, match="seed"):
        synthesize_inputs(images, tmp_path / "a", degradation=elq, seed=4, size=SIZE, progress=False)


class _StopAfter:
    """Wraps a pipeline: records the ELQ tensors it is given and stops the run (as a kill) after ``limit`` calls."""

    def __init__(self, pipeline, seen, limit=None):
        self.pipeline, self.seen, self.limit = pipeline, seen, limit

    def __getattr__(self, name):
        return getattr(self.pipeline, name)

    def __call__(self, image, **kwargs):
        if self.limit is not None and len(self.seen) == self.limit:
            raise KeyboardInterrupt
        self.seen.append(image.clone())
        return self.pipeline(image, **kwargs)


def test_a_killed_run_resumes_with_the_missing_images_only(tmp_path, projector_dir, monkeypatch):
    config = _config(tmp_path, projector_dir, methods=_methods(projector_dir)[:1])
    real_load = MethodSpec.load
    seen: list[torch.Tensor] = []
    monkeypatch.setattr(MethodSpec, "load", lambda self, **kw: _StopAfter(real_load(self, **kw), seen, limit=2))
    with pytest.raises(KeyboardInterrupt):
        evaluate(config, progress=False)
    out = Path(config.out) / "methods" / "osediff" / "hq"
    kept = {path.name: path.stat().st_mtime_ns for path in out.glob("*.png")}
    assert len(kept) == 2
    seen.clear()
    monkeypatch.setattr(MethodSpec, "load", lambda self, **kw: _StopAfter(real_load(self, **kw), seen))
    result = evaluate(config, progress=False)
    assert len(seen) == 2  # only the two images the first run did not finish
    assert {path.name: path.stat().st_mtime_ns for path in out.glob("*.png") if path.name in kept} == kept
    assert result.summary[0]["images"] == 4 and len(_csv(Path(config.out) / "per_image.csv")) == 4
    seen.clear()
    evaluate(config, progress=False)
    assert seen == []  # a finished evaluation reruns nothing


def test_every_method_reads_the_same_elq_files(tmp_path, projector_dir, monkeypatch):
    config = _config(tmp_path, projector_dir)
    real_load = MethodSpec.load
    seen: dict[str, list[torch.Tensor]] = {}
    monkeypatch.setattr(MethodSpec, "load",
                        lambda self, **kw: _StopAfter(real_load(self, **kw), seen.setdefault(self.label, [])))
    evaluate(config, progress=False)
    first, second = seen.values()
    assert len(first) == len(second) == 4
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_parse_method_reads_keys_and_options():
    spec = parse_method("projector=./p,seesr,lfo=2,prompt_extractor=dape,prompt_weights=DAPE.pth,"
                        "weights=w/,option.steps=20,restorer.merge_lora=false,name=Ours")
    assert spec.projector == "./p" and spec.restorer == "seesr" and spec.lfo == 2 and spec.label == "Ours"
    assert spec.restorer_options == {"weights": "w/", "merge_lora": False}
    assert spec.prompt_extractor_options == {"weights": "DAPE.pth"} and spec.call_options == {"steps": 20}
    assert parse_method("osediff").label == "osediff"
    assert parse_method("projector=p,osediff,lfo=2").label == "f+osediff LFO×2"


@pytest.mark.parametrize("text, message", [("osediff,seesr", "two restorers"), ("osediff,colour=1", "unknown key"),
                                           ("osediff,lfo=-1", "lfo")])
def test_parse_method_refuses_bad_specs(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_method(text)


def test_config_needs_data_methods_and_distinct_labels(tmp_path):
    with pytest.raises(ConfigError, match="--data"):
        load_evaluation_config(methods=["osediff"])
    with pytest.raises(ConfigError, match="--method"):
        load_evaluation_config(data="x")
    with pytest.raises(ConfigError, match="musiq2"):
        load_evaluation_config(data="x", methods=["osediff"], metrics=["musiq2"])
    config = load_evaluation_config(data="x", methods=["osediff", "osediff,process_size=256"])
    with pytest.raises(ConfigError, match="name="):
        config.labels()


def test_paper_configs_load():
    root = Path(__file__).resolve().parents[2] / "configs"
    for name in ("eval_paper_div2k.yaml", "eval_paper_div8k.yaml", "eval_lfo_rounds.yaml"):
        config = load_evaluation_config(root / name)
        config.labels()
        assert config.size == 512 and config.degradation == "elq"


def test_prepare_hq_is_the_centre_crop_of_the_short_side_resize():
    image = torch.rand(1, 3, 40, 60)
    prepared = prepare_hq(image, 20)
    assert prepared.shape == (1, 3, 20, 20)
    assert torch.equal(prepared, (prepared * 255).round() / 255)
    assert torch.equal(prepare_hq(image, 0), (image * 255).round() / 255)


def test_named_dataset_without_download_says_how_to_get_it():
    with pytest.raises(ConfigError, match="--data"):
        open_dataset("div8k-train")


def test_cli_evaluate_prints_settings_and_table(tmp_path, projector_dir, capsys):
    photos = _photos(tmp_path / "photos", count=2)
    config = tmp_path / "eval.yaml"
    config.write_text(f"degradation: {json.dumps(ELQ)}\n")
    code = main(["evaluate", "--config", str(config), "--data", str(photos), "--size", str(SIZE), "--method",
                 f"osediff,weights={OSEDIFF_GOLDEN_PKL},base_model={TINY_SD21},process_size={SIZE}",
                 "--metrics", "psnr", "--out", str(tmp_path / "eval"), "--device", "cpu", "-q"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "PSNR↑  pyiqa psnr on the Y of YCbCr" in printed
    assert "| Method | PSNR↑ |" in printed and "report.html" in printed


def test_cli_evaluate_without_methods_is_a_usage_error(tmp_path, capsys):
    assert main(["evaluate", "--data", str(_photos(tmp_path / "p", 1))]) == 2
    assert "--method" in capsys.readouterr().err


def test_complexity_writes_table_5_for_every_method(tmp_path, projector_dir):
    config = _config(tmp_path, projector_dir, complexity=True, complexity_size=SIZE, limit=1)
    result = evaluate(config, progress=False)
    rows = _csv(result.out / "complexity.csv")
    assert [row["method"] for row in rows] == ["OSEDiff", "Ours LFO×1"]
    g_alone, ours = rows
    assert float(ours["gmacs_lfo"]) > 0 and float(g_alone["gmacs_lfo"]) == 0
    assert float(ours["gmacs_total"]) > float(g_alone["gmacs_total"])
    assert "Complexity (Table 5)" in (result.out / "report.html").read_text()
    assert (result.out / "complexity.md").read_text().count("\n| ") >= 2


def test_a_saved_hugging_face_dataset_is_read_in_row_order(tmp_path):
    import datasets

    files = sorted(_photos(tmp_path / "photos", count=3).glob("*.png"))
    rows = datasets.Dataset.from_dict({"picture": [str(f) for f in files]}).cast_column("picture", datasets.Image())
    rows.save_to_disk(tmp_path / "saved")
    images = open_dataset(tmp_path / "saved", image_column="picture")
    assert [image.name for image in images] == ["0001", "0002", "0003"]
    expected = np.asarray(Image.open(files[1]), dtype=np.float32) / 255
    assert np.allclose(images[1].load()[0].permute(1, 2, 0).numpy(), expected)
    with pytest.raises(ConfigError, match="column"):
        open_dataset(tmp_path / "saved")


def test_auto_mode_is_a_method_and_the_report_counts_its_decisions(tmp_path, projector_dir, monkeypatch):
    import elqproj.auto

    scores = iter([85.0, 55.0, 12.0, 12.0])

    class ScriptedScorer:  # stands in for MUSIQ (tests/test_auto.py checks the real one)
        def __init__(self, config, device=None):
            self.config = config

        def __call__(self, images):
            return [next(scores) for _ in images]

    monkeypatch.setattr(elqproj.auto, "SeverityScorer", ScriptedScorer)
    g = f"osediff,weights={OSEDIFF_GOLDEN_PKL},base_model={TINY_SD21},process_size={SIZE}"
    config = _config(tmp_path, projector_dir, methods=[f"projector={projector_dir},{g},mode=auto,prompt=a photo"])
    assert config.methods[0].label == "f+osediff auto"
    result = evaluate(config, progress=False)
    assert result.decisions == {"f+osediff auto": {"mild": 1, "g alone": 1, "medium": 1, "f": 3, "severe": 2,
                                                   "LFO×2": 2}}
    assert "Auto-mode decisions (images):" in (result.out / "summary.md").read_text()
    assert "- f+osediff auto: mild 1, g alone 1, medium 1, f 3, severe 2, LFO×2 2" in (result.out / "summary.md").read_text()
    assert json.loads((result.out / "summary.json").read_text())["decisions"] == result.decisions
    assert "Auto-mode decisions" in (result.out / "report.html").read_text()
    with pytest.raises(ConfigError, match="mode=auto chooses"):
        parse_method(f"projector={projector_dir},osediff,mode=auto,lfo=2")
