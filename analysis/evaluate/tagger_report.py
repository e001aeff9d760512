"""Evaluation stage: report.html tables of jet taggers, the models side by side (`analysis.evaluate.jets`)."""

from __future__ import annotations

from typing import Any

from analysis.evaluate.html_parts import escape as _e
from analysis.evaluate.html_parts import table as _table

__all__ = ["TAGGER_GUIDE", "tagger_tables"]

TAGGER_GUIDE = ("Each signal class against the background class, on the test jets of those two classes "
                "weighted by their physics weight: the discriminant p<sub>s</sub> / (p<sub>s</sub> + "
                "p<sub>b</sub>), its background rejection 1/&epsilon;<sub>B</sub> against the signal "
                "efficiency &epsilon;<sub>S</sub> (the dashed line is no separation, 1/&epsilon;<sub>S</sub>), "
                "and 1/&epsilon;<sub>B</sub> at one &epsilon;<sub>S</sub> in bins of jet p<sub>T</sub>, the "
                "threshold chosen again in each bin.")


def _rejection(point: dict | None) -> str:
    if point is None:
        return "n/a"
    if point["rejection"] is None:
        return "∞ (no background jet passes)"
    return f"{point['rejection']:.4g} ± {point['rejection_uncertainty']:.2g}"


def _num(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def tagger_tables(metrics: dict, reference: float) -> str:
    """The tagger tables (HTML): per signal class, AUC and 1/eps_B at each working point, one column
    per model; then 1/eps_B at eps_S = ``reference`` in each pt bin."""
    record = metrics["tagger"]
    models = {name: m["tagger"] for name, m in metrics["models"].items() if m.get("tagger")}
    if not models:
        return ""
    names = list(models)
    parts = [f"<h3>Tagger: background {_e(record['background'])}, discriminant {_e(record['discriminant'])}</h3>",
             f"<p>1/&epsilon;<sub>B</sub> &plusmn; its statistical uncertainty ({_e(record['uncertainty'])}). "
             f"Jet-level folder: {_e(record['jet_level'])}.</p>"]
    rows = []
    for signal in record["signals"]:
        what = f"{signal} vs {record['background']}"
        rows.append([what, "AUC", *(_num(models[n][signal]["auc"], ".4f") for n in names)])
        for e in record["efficiencies"]:
            rows.append([what, f"1/ε_B at ε_S = {e:.0%}",
                         *(_rejection(models[n][signal]["working_points"][f"{e:g}"]) for n in names)])
        rows.append([what, "test jets (signal / background)",
                     *(f"{models[n][signal]['n_signal']} / {models[n][signal]['n_background']}" for n in names)])
    parts.append(_table(["classes", "", *names], rows))
    key = f"{reference:g}"
    for signal in record["signals"]:
        blocks = [models[n][signal]["pt_bins"] for n in names]
        rows = []
        for k, b in enumerate(blocks[0]["bins"]):
            rows.append([f"[{b['low']:.4g}, {b['high']:.4g}]", f"{b['n_signal']} / {b['n_background']}",
                         _num(b["n_eff_background"], ".4g"),
                         *(_rejection((block["bins"][k]["working_points"] or {}).get(key)) for block in blocks)])
        parts += [f"<h3>{_e(signal)} vs {_e(record['background'])}: 1/&epsilon;<sub>B</sub> at "
                  f"&epsilon;<sub>S</sub> = {reference:.0%} in bins of {_e(record['pt_column'])}</h3>",
                  _table([f"{record['pt_column']} bin [GeV]", "jets (signal / background)",
                          "effective background jets", *names], rows)]
        if blocks[0]["left_out"]:
            parts.append(f"<p>{blocks[0]['left_out']} jet(s) outside the bins.</p>")
    parts += [f"<p>{_e(name)}, {_e(signal)} vs {_e(record['background'])}: {_e(note)}</p>"
              for name, m in models.items() for signal, entry in m.items() for note in entry["notes"]]
    return "\n".join(parts)
