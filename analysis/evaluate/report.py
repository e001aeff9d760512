"""Evaluation stage: the self-contained report.html (metrics, plots, cutflow, configuration, provenance).

One file with every image embedded as a base64 ``data:`` URI, so it can be mailed, attached
to a merge request or opened offline. Provenance records what is needed to reproduce the
numbers: input folders, seeds, package versions and the git commit of the code.
"""

from __future__ import annotations

import base64
import html
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.config import Config, config_to_toml
from analysis.core.io import write_text_atomic
from analysis.evaluate.input_plots import format_yield

__all__ = ["collect_provenance", "write_report"]

PACKAGES = ("hepprep", "numpy", "pandas", "pyarrow", "awkward", "uproot", "coffea", "dask",
            "distributed", "xgboost", "torch", "scikit-learn", "scipy", "matplotlib", "mplhep", "hist")
SECTIONS = [("performance", "Classifier performance"), ("overtraining", "Overtraining check"),
            ("importance", "Feature importance"), ("correlations", "Feature correlations"),
            ("inputs", "Input features"), ("cutflow", "Cutflow")]
KS_WARNING = 0.05  # KS p-values below this are flagged as a sign of overtraining
# How to read each section, for a reader who did not write the pipeline.
GUIDE = {
    "performance": "ROC curves use the physics weight of each test event; the AMS scan counts events "
                   "with score &ge; cut, with s and b scaled to the full luminosity. The best cut is "
                   "chosen on the test split itself, so its AMS is optimistic for small samples; the "
                   "table also gives the test AMS at the cut that is best on the validation split.",
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


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _git_commit() -> str | None:
    """Commit of the checkout the code runs from, "+dirty" with uncommitted changes; None outside git."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def collect_provenance(model_dirs: list[Path], prepared, skim_dir: Path | None,
                       cutflow_path: Path | None, config: Config) -> dict[str, Any]:
    """Inputs, seeds, model training records, versions and git commit, as plain JSON data."""
    models = {}
    seeds: dict[str, Any] = {"generate.seed": config.generate.seed, "prepare.seed": config.prepare.seed}
    split = prepared.stats.get("split", {})
    if "seed" in split:
        seeds["split seed (prepared stats.json)"] = split["seed"]
    for model_dir in model_dirs:
        info = _read_json(Path(model_dir) / "model_info.json")
        keep = {k: info[k] for k in ("model", "device", "best_iteration", "best_epoch", "train_seconds")
                if k in info}
        models[str(model_dir)] = keep
        params = info.get("params", {})
        for key in ("seed", "random_state"):
            if key in params:
                seeds[f"{Path(model_dir).name} {key}"] = params[key]
    return {
        "inputs": {"prepared": str(prepared.path), "skim": str(skim_dir) if skim_dir else None,
                   "cutflow": str(cutflow_path) if cutflow_path else None,
                   "models": [str(d) for d in model_dirs]},
        "seeds": seeds,
        "models": models,
        "versions": _versions(),
        "git_commit": _git_commit(),
        "platform": platform.platform(),
        "command": " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv)),
    }


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, fmt: str = ".4g") -> str:
    return "–" if value is None else format(value, fmt)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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


def write_report(out: Path, *, metrics: dict, plots: list[dict], cutflow: pd.DataFrame | None,
                 config: Config, provenance: dict) -> Path:
    """Write ``out/report.html``; ``plots`` are {"section", "title", "file" (relative to out)}."""
    out = Path(out)
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             "<title>hepprep evaluation report</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
             "<h1>hepprep evaluation: H→ττ vs background</h1>",
             f"<p>Prepared directory <code>{_e(metrics['prep_dir'])}</code>; models: "
             f"{_e(', '.join(metrics['models']))}.</p>",
             *(f'<p class="warning"><strong>Warning:</strong> {_e(w)}</p>' for w in metrics.get("warnings", [])),
             "<h2>Metrics (test split)</h2>", _metrics_table(metrics), _sample_table(metrics)]
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
        parts += [f"<h2>{heading}</h2>", f"<p>{GUIDE[key]}</p>", f'<div class="{layout}">']
        parts += [_figure(out, p) for p in figures]
        parts.append("</div>")
    if not any(p["section"] == "importance" for p in plots):
        parts.append("<p>No feature importance: only XGBoost models provide gain and SHAP values.</p>")
    inputs = provenance["inputs"]
    parts += ["<h2>Provenance</h2>",
              _table(["input", "path"], [[k, v if not isinstance(v, list) else ", ".join(v)]
                                         for k, v in inputs.items()]),
              _table(["seed", "value"], [[k, v] for k, v in provenance["seeds"].items()]),
              _table(["model directory", "training record"],
                     [[k, json.dumps(v)] for k, v in provenance["models"].items()]),
              _table(["", ""], [["git commit", provenance["git_commit"] or "not a git checkout"],
                                ["platform", provenance["platform"]], ["command", provenance["command"]]]),
              _table(["package", "version"], [[k, v] for k, v in provenance["versions"].items()]),
              "<h2>Configuration</h2>", f"<pre>{_e(config_to_toml(config))}</pre>",
              "</body>", "</html>"]
    path = out / "report.html"
    write_text_atomic(path, "\n".join(parts) + "\n")
    return path
