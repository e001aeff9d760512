"""Evaluation stage: `hepprep evaluate` — metrics.json, plots/*.png and report.html for models.

One or more trained models are scored on the test split of a prepared directory (and on its
training split, for the overtraining check) through `analysis.train.predict`, the one prediction
API. All models share one set of plots. The input-feature plots stream every prepared
event (and pseudo-data, from ``<prep>/data`` or the skim) through bounded-size batches.

Output folder::

    <out>/metrics.json     weighted AUC, signal efficiency at fixed background efficiency,
                           best-cut AMS with s and b at the full luminosity (and at the cut
                           chosen on the validation split), KS p-values train vs test, and
                           the provenance (`analysis.core.provenance`)
    <out>/plots/*.png      input features, correlations, ROC, scores, AMS, importance, cutflow
    <out>/report.html      one self-contained page (images embedded)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.config import Config
from analysis.core.io import write_json_atomic
from analysis.core.progress import progress_bar, stage_console
from analysis.core.target import Target
from analysis.errors import StageInputError
from analysis.evaluate.input_plots import (plot_correlation,
                                           plot_cutflow_table, plot_feature)
from analysis.evaluate.inputs import (EVENT_COLUMNS, check_model_features, check_prepared_match, load_models,
                                      model_names, open_prepared, read_cutflow)
from analysis.evaluate.jets import JetLevel, plan_jet_level, tagger_entries
from analysis.evaluate.metrics import (ams_scan, signal_efficiency_at, weighted_ks_2samp, weighted_roc,
                                       weighted_roc_auc)
from analysis.evaluate.scoring import (Scorer, Streamed, class_weight_sums, score_test,
                                       feature_importance, find_cutflow, list_columns_of, split_fractions,
                                       stream_events)
from analysis.evaluate.plots import file_slug as _slug
from analysis.evaluate.plots import plot_ams, plot_importance, plot_roc, plot_scores
from analysis.evaluate.targets import evaluate_target, target_test_columns

__all__ = ["run_evaluate"]


def _ams_at_val_cut(scorer: Scorer, scores: np.ndarray, y: np.ndarray, w: np.ndarray,
                    streamed: Streamed, fractions: dict[str, tuple[float, float]], ev) -> dict | None:
    """AMS on the test split at the cut that maximises it on the validation split.

    The best test-split cut is tuned on the very events it is quoted on, which favours
    upward fluctuations when few background events pass; a cut from the validation split
    gives an unbiased figure.
    """
    val = streamed.scored.get("val")
    if val is None or "val" not in fractions:
        return None
    val_scan = ams_scan(val.scores[scorer.name], val.labels, val.weights, test_fraction=fractions["val"],
                        n_cuts=ev.n_cuts, b_reg=ev.b_reg)
    at = ams_scan(scores, y, w, test_fraction=fractions["test"], cuts=[val_scan.best_cut], b_reg=ev.b_reg)
    return {"cut": val_scan.best_cut, "ams": float(at.ams[0]), "s": float(at.s[0]), "b": float(at.b[0]),
            "ams_on_val": val_scan.best_ams}


def _model_metrics(scorer: Scorer, scores: np.ndarray, test: pd.DataFrame, streamed: Streamed,
                   fractions: dict[str, tuple[float, float]], ev) -> dict:
    """metrics.json entry of one model, plus the curves its plots need (keys starting with _)."""
    y, w = test["label"].to_numpy(), test["weight"].to_numpy(np.float64)
    train = streamed.scored["train"]
    y_tr, w_tr, s_tr = train.labels, train.weights, train.scores[scorer.name]
    fpr, tpr, _ = weighted_roc(scores, y, w)
    auc = weighted_roc_auc(scores, y, w)
    scan = ams_scan(scores, y, w, test_fraction=fractions["test"], n_cuts=ev.n_cuts, b_reg=ev.b_reg)
    effs = signal_efficiency_at(scores, y, w, background_efficiency=ev.background_efficiencies)
    ks = {cls: weighted_ks_2samp(s_tr[y_tr == label], scores[y == label],
                                 weights_a=w_tr[y_tr == label], weights_b=w[y == label])
          for label, cls in ((1, "signal"), (0, "background"))}
    return {
        "model_dir": str(scorer.model_dir),
        "kind": scorer.model.kind,
        "roc_auc": auc,
        "signal_efficiency": {f"{e:g}": v for e, v in effs.items()},
        "ams": scan.summary(),
        "ams_val_cut": _ams_at_val_cut(scorer, scores, y, w, streamed, fractions, ev),
        "ks": {cls: {"statistic": r.statistic, "pvalue": r.pvalue, "n_eff_train": r.n_eff_a,
                     "n_eff_test": r.n_eff_b} for cls, r in ks.items()},
        "_roc": (fpr, tpr, auc), "_scan": scan, "_ks": ks,
    }


def _draw_plots(out: Path, scorers: list[Scorer], metrics: dict[str, dict], test: pd.DataFrame,
                test_scores: dict[str, np.ndarray], streamed: Streamed, cutflow: pd.DataFrame | None,
                features: list[str], config: Config, bar, *, target: Target, prepared,
                jets: JetLevel | None) -> list[dict]:
    """Every plot; returns [{"section", "title", "file"}] in report order. Adds the
    XGBoost importances to ``metrics`` (and, for a multi-class or regression target, the
    models' entries themselves; on a jet-level folder, each classifier's ``tagger``)."""
    ev, plot_dir, lumi_fb = config.evaluate, out / "plots", config.lumi_pb / 1000.0
    plot_dir.mkdir(parents=True, exist_ok=True)
    task = bar.add_task("evaluate: plots", total=len(features) + 4 + 2 * len(scorers) + (cutflow is not None))
    plots: list[dict] = []

    def add(section: str, title: str, path: Path) -> None:
        plots.append({"section": section, "title": title, "file": str(path.relative_to(out))})
        bar.advance(task)

    if target.kind != "binary":
        metrics.update(evaluate_target(target, scorers, test, test_scores, prepared, config, plot_dir, add,
                                       jets=jets))
    else:
        add("performance", "ROC curves (weighted, test split)",
            plot_roc({n: m["_roc"] for n, m in metrics.items()}, plot_dir / "roc.png",
                     working_points=ev.background_efficiencies, lumi_fb=lumi_fb, dpi=ev.dpi))
        add("performance", "AMS against the score cut (yields at the full luminosity)",
            plot_ams({n: m["_scan"] for n, m in metrics.items()}, plot_dir / "ams.png", lumi_fb=lumi_fb, dpi=ev.dpi))
    if jets is not None and jets.is_tagger:
        for name, entry in tagger_entries(jets, scorers, test, test_scores, config, plot_dir, add).items():
            metrics[name]["tagger"] = entry
    train = streamed.scored["train"]
    for scorer in scorers:
        name = scorer.name
        if target.kind == "binary":
            add("overtraining", f"{name}: score distributions, train vs test",
                plot_scores(name, (train.scores[name], train.labels, train.weights),
                            (test_scores[name], test["label"].to_numpy(), test["weight"].to_numpy()),
                            metrics[name]["_ks"], plot_dir / f"scores_{_slug(name)}.png", dpi=ev.dpi))
        found = feature_importance(scorer, test, ev.shap_rows)
        if found is None:  # not a tree model
            bar.advance(task)
            continue
        gain, shap = found
        metrics[name]["importance"] = {"total_gain": gain, "mean_abs_shap": shap}
        add("importance", f"{name}: feature importance (gain, mean |SHAP|)",
            plot_importance(name, gain, shap, plot_dir / f"importance_{_slug(name)}.png", dpi=ev.dpi,
                            analysis=streamed.hists.analysis))
    for label, cls in ((1, "signal"), (0, "background")):
        add("correlations", f"Feature correlations, {cls}",
            plot_correlation(streamed.correlations[label].correlation_, features,
                             title=f"Weighted correlations: {cls}", path=plot_dir / f"correlation_{cls}.png",
                             dpi=ev.dpi, analysis=streamed.hists.analysis))
    for feature in features:
        add("inputs", f"Input feature {feature}",
            plot_feature(streamed.hists.hists_[feature], signal_processes=sorted(streamed.signal_processes),
                         path=plot_dir / f"feature_{feature}.png", lumi_fb=lumi_fb, dpi=ev.dpi))
    if cutflow is not None:
        add("cutflow", "Cutflow of the skim", plot_cutflow_table(cutflow, path=plot_dir / "cutflow.png", dpi=ev.dpi))
    return plots


def run_evaluate(model_dirs: Sequence[str | Path], prep_dir: str | Path, out_dir: str | Path,
                 config: Config, *, skim_dir: str | Path | None = None,
                 allow_other_prepared: bool = False, progress: bool = True) -> Path:
    """Evaluate trained models on a prepared directory; write metrics, plots and the report.

    Parameters
    ----------
    model_dirs : list of str or Path
        Model directories of `hepprep train` (compared on one set of plots).
    prep_dir : str or Path
        The prepared directory the models were trained on.
    out_dir : str or Path
        Output folder: metrics.json, plots/, report.html.
    config : Config
        ``config.evaluate`` (AMS b_reg, working points, binning, dpi), ``config.lumi_pb``,
        ``config.samples`` (which skim datasets are data) and the report's configuration.
    skim_dir : str or Path or None, keyword-only
        Skim directory for cutflow.json (and pseudo-data when <prep>/data is absent);
        default: the skim folder prepare recorded in manifest.json (``source``).
    allow_other_prepared : bool, keyword-only
        Evaluate a model that was not trained on ``prep_dir`` (its recorded prepared
        fingerprint differs) instead of refusing it; marked in metrics.json and the report.
    progress : bool, keyword-only
        Progress bars on stderr.

    Returns
    -------
    Path
        ``<out_dir>/report.html``.

    Raises
    ------
    StageInputError
        Missing or incomplete inputs, a model whose features differ from the prepared
        directory's (one line naming both and the differing features), or a model trained
        on another preparation (unless ``allow_other_prepared``).
    """
    from analysis.evaluate.report import collect_provenance, evaluation_provenance, write_report

    model_dirs = [Path(d) for d in model_dirs]
    prepared = open_prepared(prep_dir)
    if not prepared.has_split("train"):
        raise StageInputError(f"{prepared.path / 'train'}: no training split for the overtraining "
                              "check; re-run `hepprep prepare`")
    models = load_models(model_dirs)
    for model, model_dir in zip(models, model_dirs):
        check_model_features(model, model_dir, prepared)
    prepared_match, warnings = check_prepared_match(models, model_dirs, prepared,
                                                     allow_other_prepared=allow_other_prepared)
    names = model_names(model_dirs, models)
    scorers = [Scorer(n, m, d, prepared) for n, m, d in zip(names, models, model_dirs)]
    skim = Path(skim_dir) if skim_dir is not None else prepared.skim_dir
    features = prepared.feature_order
    target = Target.from_stats(prepared.stats, where=str(prepared.path / "stats.json"))
    binary = target.kind == "binary"
    jets = plan_jet_level(prepared, target, config)  # None: an event-level folder
    fractions = {}
    if binary:  # signal/background yield fractions of the AMS; a multi-class target has its own per class
        sums = class_weight_sums(prepared)
        fractions["test"] = split_fractions(sums, "test", prepared.path / "test")
        if all(sums["val"][label] > 0 for label in (0, 1)):
            fractions["val"] = split_fractions(sums, "val", prepared.path / "val")
    cutflow_path = find_cutflow(prepared, skim)
    cutflow = read_cutflow(cutflow_path) if cutflow_path else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    with progress_bar(quiet=not progress) as bar:
        task = bar.add_task("evaluate: score test", total=len(scorers))
        columns = features + EVENT_COLUMNS + ([] if binary else target_test_columns(target, config))
        columns += jets.columns if jets else []
        # a baseline or the pt may be a feature too; a tagger's constituent lists are read in batches
        test, test_scores = score_test(prepared, scorers, list(dict.fromkeys(columns)))
        bar.advance(task, len(scorers))
        jets = jets.with_test(test, prepared) if jets else None
        streamed = stream_events(prepared, scorers, skim, config, bar)
        model_metrics = ({s.name: _model_metrics(s, test_scores[s.name], test, streamed, fractions, config.evaluate)
                          for s in scorers} if binary else {})
        plots = _draw_plots(out, scorers, model_metrics, test, test_scores, streamed, cutflow, features,
                            config, bar, target=target, prepared=prepared, jets=jets)

    y_test, w_test = test["label"].to_numpy(), test["weight"].to_numpy(np.float64)
    metrics = {
        "prep_dir": str(prepared.path),
        **({"test_fraction": {"signal": fractions["test"][0], "background": fractions["test"][1],
                              "nominal": (prepared.split_fractions() or [None] * 3)[2]},
            "test_events": {"signal": int((y_test == 1).sum()), "background": int((y_test == 0).sum())},
            "test_yield": {"signal": float(w_test[y_test == 1].sum()), "background": float(w_test[y_test == 0].sum())}}
           if binary else {"target": target.stats_record(), "test_events": len(test)}),
        "data_events": streamed.data_events,
        "negative_weights": {"yields": "signed", "roc_ks_correlation": "abs"},
        "models": {name: {**{k: v for k, v in m.items() if not k.startswith("_")},
                          "trained_on_this_prepared": prepared_match[m["model_dir"]]}
                   for name, m in model_metrics.items()},
        **({"tagger": jets.record()} if jets else {}),
        "warnings": warnings,
        "plots": [p["file"] for p in plots],
        "provenance": evaluation_provenance(model_dirs, prepared, skim, config),
    }
    write_json_atomic(out / "metrics.json", metrics)
    provenance = collect_provenance(model_dirs, prepared, skim, cutflow_path, metrics["provenance"], out=out)
    report = write_report(out, metrics=metrics, plots=plots, cutflow=cutflow, config=config,
                          provenance=provenance)
    console = stage_console(quiet=not progress)
    for warning in warnings:
        console.print(f"evaluate: warning: {warning}", soft_wrap=True)
    for name, m in metrics["models"].items():
        for signal, t in (m.get("tagger") or {}).items():
            rejections = ", ".join(f"{float(e):.0%} {p['rejection']:.3g}" if p and p["rejection"]
                                   else f"{float(e):.0%} n/a" for e, p in t["working_points"].items())
            console.print(f"{name}: {signal} vs {t['background']}: AUC {t['auc'] or float('nan'):.4f}, "
                          f"1/eps_B at eps_S {rejections}")
        if "multiclass" in m:
            aucs = ", ".join(f"{c} {a:.3f}" for c, a in m["multiclass"]["ovr_auc"].items() if a is not None)
            console.print(f"{name}: macro one-vs-rest AUC {m['multiclass']['macro_auc']:.4f} ({aucs})")
        elif "regression" in m:
            for column, r in m["regression"].items():
                versus = (f", {config.target.baseline} {r['baseline']['resolution']:.4f}"
                          if r.get("baseline") else "")
                console.print(f"{name}: {column} median response {r['model']['median']:.4f}, "
                              f"resolution {r['model']['resolution']:.4f}{versus}")
        else:
            console.print(f"{name}: AUC {m['roc_auc']:.4f}, AMS {m['ams']['ams']:.3f} at cut "
                          f"{m['ams']['best_cut']:.3f} (s {m['ams']['s']:.1f}, b {m['ams']['b']:.1f})")
    console.print(f"report: {report}")
    return report
