"""Evaluation stage: the self-contained report.html (metrics, plots, cutflow, configuration, provenance).

One file with every image embedded as a base64 ``data:`` URI, so it can be mailed, attached
to a merge request or opened offline. Provenance records what is needed to reproduce the
numbers: input folders, seeds, package versions and the git commit of the code.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.config import Config, config_to_toml
from analysis.core.io import write_text_atomic
from analysis.core.provenance import (
    GENERATE_SETTINGS_FILE,
    RECORD_FILES,
    build_provenance,
    current_fingerprint,
    folder_input,
    read_record,
    short,
    stage_view,
)
from analysis.evaluate.html_parts import escape as _e
from analysis.evaluate.html_parts import table as _table
from analysis.evaluate.input_plots import format_yield
from analysis.evaluate.tagger_report import TAGGER_GUIDE, tagger_tables
from analysis.evaluate.taggers import reference_efficiency
from analysis.evaluate.target_report import TARGET_GUIDE, target_tables, target_title

__all__ = ["collect_provenance", "evaluation_provenance", "write_report"]

SECTIONS = [("performance", "Classifier performance"), ("tagger", "Tagger performance (jets)"),
            ("regression", "Regression performance"),
            ("overtraining", "Overtraining check"),
            ("importance", "Feature importance"), ("correlations", "Feature correlations"),
            ("inputs", "Input features"), ("cutflow", "Cutflow")]
KS_WARNING = 0.05  # KS p-values below this are flagged as a sign of overtraining
# How to read each section, for a reader who did not write the pipeline.
GUIDE = {
    "performance": "ROC curves use the physics weight of each test event; the AMS scan counts events "
                   "with score &ge; cut, with s and b scaled to the full luminosity. The best cut is "
                   "chosen on the test split itself, so its AMS is optimistic for small samples; the "
                   "table also gives the test AMS at the cut that is best on the validation split.",
    "tagger": TAGGER_GUIDE,
    "overtraining": "Training-split scores (points) against test-split scores (filled), each class "
                    "normalised to unit area. A Kolmogorov&ndash;Smirnov p-value below 0.05 means the "
                    "two differ more than statistics allow: the model has learnt its training events.",
    "importance": "Total split gain of each feature, and the mean absolute SHAP value (contribution "
                  "to the log-odds of one event) on test events, for the XGBoost models.",
    "correlations": "Weighted Pearson correlation coefficients of the input features over all "
                    "prepared events, separately for signal and background.",
    "inputs": "All prepared events (train, validation and test) in physical units, stacked "
              "backgrounds weighted to the full luminosity, signal overlaid and magnified by the "
              "factor in the legend, pseudo-data with a ratio panel where the sample has data.",
}


def _model_seeds(info: dict) -> dict[str, Any]:
    params = info.get("params") if isinstance(info.get("params"), dict) else {}
    return {key: params[key] for key in ("seed", "random_state") if key in params}


def evaluation_provenance(model_dirs: list[Path], prepared, skim_dir: Path | None,
                          config: Config) -> dict[str, Any]:
    """metrics.json's ``provenance``: the prepared folder, each model folder (with the sha256 of
    its model_info.json) and the skim read for the cutflow, each with its fingerprint; the
    seeds of the split and of each model."""
    inputs = [folder_input("prepared", Path(prepared.path).resolve(), prepared.fingerprint)]
    inputs += [folder_input("model", Path(d).resolve(), current_fingerprint("model", d)) for d in model_dirs]
    skim_fp = current_fingerprint("skim", skim_dir) if skim_dir is not None else None
    if skim_fp is not None:
        inputs.append(folder_input("skim", Path(skim_dir).resolve(), skim_fp))
    seeds: dict[str, Any] = {}
    split = prepared.stats.get("split", {})
    if isinstance(split, dict) and "seed" in split:
        seeds["prepare.seed"] = split["seed"]
    for model_dir in model_dirs:
        for key, value in _model_seeds(read_record("model", model_dir) or {}).items():
            seeds[f"{Path(model_dir).name}.{key}"] = value
    return build_provenance("evaluate", config=config.model_dump(mode="json"), inputs=inputs, seeds=seeds)


def _chain(out: Path, model_dirs: list[Path], prepared, skim_dir: Path | None) -> list[dict[str, Any]]:
    """Every stage behind this evaluation that it knows, newest first (`core.provenance.stage_view`)."""
    chain = [dict(stage_view("evaluation", out), label="evaluation")]
    chain += [dict(stage_view("model", d), label=f"model {Path(d).name}") for d in model_dirs]
    chain.append(dict(stage_view("prepared", prepared.path), label="prepared"))
    if skim_dir is not None and (Path(skim_dir) / RECORD_FILES["skim"]).is_file():
        skim = dict(stage_view("skim", skim_dir), label="skim")
        chain.append(skim)
        fileset = [r["path"] for r in skim["inputs"] if r["kind"] == "fileset"]
        settings = Path(fileset[0]).parent / GENERATE_SETTINGS_FILE if fileset else None
        if settings is not None and settings.is_file():
            generate = _read_json(settings).get("generate") or {}
            chain.append({"label": "generate", "path": str(settings), "provenance": None,
                          "fingerprint": None, "fingerprint_now": None, "inputs": [],
                          "settings": {k: generate.get(k) for k in ("seed", "events", "files_per_sample")}})
    return chain


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def collect_provenance(model_dirs: list[Path], prepared, skim_dir: Path | None,
                       cutflow_path: Path | None, record: dict[str, Any], *, out: Path) -> dict[str, Any]:
    """What the report's Provenance section shows: this evaluation's ``record`` (metrics.json's
    ``provenance``), its input paths and seeds, the models' training records, and the
    provenance of every stage behind it (``chain``)."""
    models = {}
    for model_dir in model_dirs:
        info = read_record("model", model_dir) or {}
        models[str(model_dir)] = {k: info[k] for k in ("model", "device", "best_iteration", "best_epoch",
                                                         "train_seconds") if k in info}
    return {
        "inputs": {"prepared": str(prepared.path), "skim": str(skim_dir) if skim_dir else None,
                   "cutflow": str(cutflow_path) if cutflow_path else None,
                   "models": [str(d) for d in model_dirs]},
        "seeds": record["seeds"],
        "models": models,
        "versions": {"hepprep": record["hepprep_version"], **record["libraries"]},
        "git_commit": record["git_commit"],
        "platform": record["platform"],
        "command": record["command"],
        "config_hash": record["config_hash"],
        "chain": _chain(out, model_dirs, prepared, skim_dir),
    }


def _num(value: Any, fmt: str = ".4g") -> str:
    return "–" if value is None else format(value, fmt)


def _ks(pvalue: float) -> str:
    return _num(pvalue, ".3g") + (" (overtrained?)" if pvalue < KS_WARNING else "")


def _metrics_table(metrics: dict) -> str:
    effs = None
    rows = []
    for name, m in metrics["models"].items():
        effs = list(m["signal_efficiency"])
        rows.append([name, m["kind"], _num(m["roc_auc"], ".4f")]
                    + [_num(m["signal_efficiency"][e], ".3f") for e in effs]
                    + [_num(m["ams"]["ams"], ".3f"), _num(m["ams"]["best_cut"], ".3f"),
                       _num(m["ams"]["s"], ".1f"), _num(m["ams"]["b"], ".1f"),
                       (f'{m["ams_val_cut"]["ams"]:.3f} (cut {m["ams_val_cut"]["cut"]:.3f})'
                        if m.get("ams_val_cut") else "–"),
                       _ks(m["ks"]["signal"]["pvalue"]), _ks(m["ks"]["background"]["pvalue"])])
    header = (["model", "kind", "weighted AUC"] + [f"ε_s at ε_b = {float(e):.0%}" for e in effs or []]
              + ["best AMS", "best cut", "s (full lumi)", "b (full lumi)", "AMS at validation-best cut",
                 "KS p signal", "KS p background"])
    return _table(header, rows)


def _sample_table(metrics: dict) -> str:
    tf = metrics["test_fraction"]
    rows = [[cls, metrics["test_events"][cls], _num(metrics["test_yield"][cls], ".4g"), _num(tf[cls], ".4f")]
            for cls in ("signal", "background")]
    note = (f"<p>Yields s and b are the test-split sums of <code>weight</code> divided by each class's "
            f"test fraction (Σweight in test / Σweight in all splits; nominal split fraction "
            f"{_e(tf.get('nominal'))}). Pseudo-data events in the input plots: {_e(metrics['data_events'])}. "
            "Negative weights: signed in yields, absolute in ROC, KS and correlations.</p>")
    return _table(["class", "test events", "test Σweight", "test fraction"], rows) + note


def _cutflow_html(cutflow: pd.DataFrame) -> str:
    cuts = list(dict.fromkeys(cutflow["cut"]))
    rows = []
    for dataset in dict.fromkeys(cutflow["dataset"]):
        sub = cutflow[cutflow["dataset"] == dataset].set_index("cut")
        row = [dataset]
        for cut in cuts:
            if cut not in sub.index:
                row.append("")
                continue
            ev, sw = sub.loc[cut, "events"], sub.loc[cut, "sumw"]
            row.append((f"{int(ev):,}" if pd.notna(ev) else "–")
                       + (f" ({format_yield(float(sw))})" if pd.notna(sw) else ""))
        rows.append(row)
    return "<p>Events after each cut (sum of weights in brackets).</p>" + _table(["dataset"] + cuts, rows)


def _figure(out: Path, plot: dict) -> str:
    data = base64.b64encode((out / plot["file"]).read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(plot["title"])}">'
            f'<figcaption>{_e(plot["title"])} <code>{_e(plot["file"])}</code></figcaption></figure>')


_CSS = """
body { font-family: sans-serif; margin: 2em auto; padding: 0 1.5em; max-width: 1500px; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #aaa; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.95em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.7em; text-align: right; }
th { background: #eee; } td:first-child, th:first-child { text-align: left; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 1em; }
.wide { display: grid; grid-template-columns: minmax(0, 1100px); gap: 1em; }
figure { margin: 0; } img { width: 100%; height: auto; border: 1px solid #ddd; }
.warning { background: #fff3cd; border: 1px solid #e0a800; padding: 0.6em 1em; }
figcaption { font-size: 0.85em; color: #555; } pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""


def _seed_label(key: str) -> str:
    if key == "prepare.seed":
        return "split seed (prepared stats.json)"
    name, _, what = key.rpartition(".")
    return f"{name} {what}" if name else key


def _chain_html(chain: list[dict[str, Any]]) -> list[str]:
    """One table per stage behind the evaluation, with what it read and whether that still matches."""
    parts = ["<h3>Every stage behind these numbers</h3>",
             "<p>Each stage's record (its manifest, model_info.json or metrics.json) names the code, "
             "configuration and inputs it ran with. &ldquo;now&rdquo; compares each recorded input "
             "with what is on disk as this report is written (<code>hepprep provenance DIR</code> "
             "checks it again later).</p>"]
    for stage in chain:
        record = stage["provenance"]
        rows: list[list[Any]] = []
        if record:
            rows += [["hepprep", record.get("hepprep_version")],
                     ["git commit", record.get("git_commit") or "not a git checkout"],
                     ["config hash", record.get("config_hash")], ["command", record.get("command")],
                     ["seeds", ", ".join(f"{k} = {v}" for k, v in (record.get("seeds") or {}).items())
                      or "none"]]
        elif stage.get("settings"):
            rows += [[f"generate.{k}", v] for k, v in stage["settings"].items()]
        else:
            rows.append(["provenance", "not recorded (written by an older hepprep, or by hand)"])
        fingerprint, now = stage["fingerprint"], stage["fingerprint_now"]
        if fingerprint is None and now is not None:
            rows.append(["fingerprint", f"not recorded (on disk now: {now})"])
        elif fingerprint is not None:
            rows.append(["fingerprint", fingerprint + ("" if now == fingerprint else
                                                       f" (on disk now {short(now)}: CHANGED)")])
        parts += [f"<h4>{_e(stage['label'])}: <code>{_e(stage['path'])}</code></h4>", _table(["", ""], rows)]
        if stage["inputs"]:
            rows = [[r["kind"], r["path"], r["recorded"], r["status"]] for r in stage["inputs"]]
            parts.append(_table(["input", "path", "recorded", "now"], rows))
    return parts


def write_report(out: Path, *, metrics: dict, plots: list[dict], cutflow: pd.DataFrame | None,
                 config: Config, provenance: dict) -> Path:
    """Write ``out/report.html``; ``plots`` are {"section", "title", "file" (relative to out)}."""
    out = Path(out)
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             "<title>hepprep evaluation report</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
             f"<h1>hepprep evaluation: {'H→ττ vs background' if 'target' not in metrics else target_title(metrics)}</h1>",
             f"<p>Prepared directory <code>{_e(metrics['prep_dir'])}</code>; models: "
             f"{_e(', '.join(metrics['models']))}.</p>",
             *(f'<p class="warning"><strong>Warning:</strong> {_e(w)}</p>' for w in metrics.get("warnings", [])),
             "<h2>Metrics (test split)</h2>",
             *([_metrics_table(metrics), _sample_table(metrics)] if "target" not in metrics else [target_tables(metrics)]),
             *([tagger_tables(metrics, reference_efficiency(metrics["tagger"]["efficiencies"]))]
               if "signals" in metrics.get("tagger", {}) else [])]
    guide = {**GUIDE, **TARGET_GUIDE.get(metrics.get("target", {}).get("kind"), {})}
    for key, heading in SECTIONS:
        figures = [p for p in plots if p["section"] == key]
        if key == "cutflow" and cutflow is not None:
            parts += [f"<h2>{heading}</h2>", _cutflow_html(cutflow)]
            parts += [_figure(out, p) for p in figures]
            continue
        if not figures:
            continue
        # One label (or number) per feature: these need the page width to stay legible.
        layout = "wide" if key in ("importance", "correlations") else "grid"
        parts += [f"<h2>{heading}</h2>", f"<p>{guide[key]}</p>", f'<div class="{layout}">']
        parts += [_figure(out, p) for p in figures]
        parts.append("</div>")
    if not any(p["section"] == "importance" for p in plots):
        parts.append("<p>No feature importance: only XGBoost models provide gain and SHAP values.</p>")
    inputs = provenance["inputs"]
    parts += ["<h2>Provenance</h2>",
              _table(["input", "path"], [[k, v if not isinstance(v, list) else ", ".join(v)]
                                         for k, v in inputs.items()]),
              _table(["seed", "value"], [[_seed_label(k), v] for k, v in provenance["seeds"].items()]),
              _table(["model directory", "training record"],
                     [[k, json.dumps(v)] for k, v in provenance["models"].items()]),
              _table(["", ""], [["git commit", provenance["git_commit"] or "not a git checkout"],
                                ["config hash", provenance["config_hash"]],
                                ["platform", provenance["platform"]], ["command", provenance["command"]]]),
              _table(["package", "version"], [[k, v] for k, v in provenance["versions"].items()]),
              *_chain_html(provenance["chain"]),
              "<h2>Configuration</h2>", f"<pre>{_e(config_to_toml(config))}</pre>",
              "</body>", "</html>"]
    path = out / "report.html"
    write_text_atomic(path, "\n".join(parts) + "\n")
    return path
