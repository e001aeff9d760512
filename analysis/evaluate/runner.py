"""Evaluation stage: `hepprep evaluate` — metrics.json, plots/*.png and report.html for models.

One or more trained models are scored on the test split of a prepared directory (and on its
training split, for the overtraining check) through `analysis.train.predict`, the one prediction
API. All models share one set of plots. The input-feature plots stream every prepared
event (and pseudo-data, from ``<prep>/data`` or the skim) through bounded-size batches.

Output folder::

    <out>/metrics.json     weighted AUC, signal efficiency at fixed background efficiency,
                           best-cut AMS with s and b at the full luminosity (and at the cut
                           chosen on the validation split), KS p-values train vs test
    <out>/plots/*.png      input features, correlations, ROC, scores, AMS, importance, cutflow
    <out>/report.html      one self-contained page (images embedded)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from analysis.config import Config
from analysis.core.io import write_json_atomic
from analysis.core.progress import progress_bar, stage_console
from analysis.core.skimmed import skim_parts
from analysis.core.standardise import Standardisation
from analysis.errors import StageInputError
from analysis.evaluate.input_plots import (
    FeatureHistograms,
    WeightedCorrelation,
    plot_correlation,
    plot_cutflow_table,
    plot_feature,
)
from analysis.evaluate.inputs import (
    EVENT_COLUMNS,
    SPLITS,
    PreparedDir,
    check_model_features,
    load_models,
    model_names,
    open_prepared,
    read_cutflow,
    standardisation_matches,
)
from analysis.evaluate.metrics import (
    ams_scan,
    signal_efficiency_at,
    weighted_ks_2samp,
    weighted_roc,
    weighted_roc_auc,
)
from analysis.evaluate.plots import plot_ams, plot_importance, plot_roc, plot_scores

__all__ = ["run_evaluate"]

BATCH_ROWS = 200_000  # rows per streamed batch: bounds the memory of the feature histograms
SCORED_SPLITS = ("train", "val")  # besides test: overtraining check, and the AMS cut choice


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


class _Scorer:
    """A loaded model with what is needed to feed it prepared (standardised) columns."""

    def __init__(self, name: str, model, model_dir: Path, prepared: PreparedDir):
        self.name, self.model, self.model_dir, self.prepared = name, model, model_dir, prepared
        # Same mean/std as the prepared directory: pass standardised columns as they are;
        # otherwise hand over raw values and let the model apply its own standardisation.
        self.same_standardisation = standardisation_matches(model, prepared)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        features = list(self.model.features)
        if self.same_standardisation:
            return np.asarray(self.model.predict(frame[features], standardised=True), dtype=np.float64)
        raw = self.prepared.destandardise(frame[features], features)
        return np.asarray(self.model.predict(raw, standardised=False), dtype=np.float64)

    def model_inputs(self, frame: pd.DataFrame) -> np.ndarray:
        """Feature matrix as the model saw it in training (its own standardisation)."""
        features = list(self.model.features)
        if self.same_standardisation:
            return frame[features].to_numpy(np.float32)
        raw = self.prepared.destandardise(frame[features], features)
        return Standardisation.from_stats(self.model.stats, features).transform(raw.to_numpy(np.float64))


def _class_weight_sums(prepared: PreparedDir) -> dict[str, dict[int, float]]:
    """Σ weight per class in each split (reads only two columns)."""
    out = {}
    for split in SPLITS:
        if not prepared.has_split(split):
            out[split] = {0: 0.0, 1: 0.0}
            continue
        frame = prepared.read(split, ["label", "weight"])
        sums = frame.groupby("label")["weight"].sum()
        out[split] = {label: float(sums.get(label, 0.0)) for label in (0, 1)}
    return out


def _split_fractions(sums: dict[str, dict[int, float]], split: str, path: Path) -> tuple[float, float]:
    """(signal, background) fraction of the full yield that ``split`` holds."""
    fractions = []
    for label, cls in ((1, "signal"), (0, "background")):
        total = sum(sums[s][label] for s in SPLITS)
        if not sums[split][label] > 0 or not total > 0:
            raise StageInputError(f"{path}: the {split} split has no {cls} yield (sum of weight "
                                  f"{sums[split][label]:g}); evaluation needs both classes")
        fractions.append(min(1.0, sums[split][label] / total))
    return fractions[0], fractions[1]


def _data_frames(prepared: PreparedDir, skim_dir: Path | None, config: Config, features: list[str]):
    """Pseudo-data batches in raw units: <prep>/data (standardised) or the skim's data datasets."""
    if prepared.has_split("data"):
        for batch in prepared.iter_batches("data", features + ["weight"], batch_rows=BATCH_ROWS):
            yield prepared.destandardise(batch, features)
        return
    if skim_dir is None or not (Path(skim_dir) / "manifest.json").is_file():
        return
    # Only the parts the skim manifest lists (core.skimmed), of the datasets that are data.
    parts = skim_parts(skim_dir, allow_incomplete=True).by_dataset
    files = sorted(str(p) for name, s in config.samples.items() if s.label == -1
                   for p in parts.get(name, ()))
    if not files:
        return
    dataset = pads.dataset(files, format="parquet")
    missing = [c for c in features + ["weight"] if c not in dataset.schema.names]
    if missing:
        raise StageInputError(f"{skim_dir}: data skim has no column(s) {', '.join(missing)}; "
                              "re-run the skim with this feature list")
    for batch in dataset.to_batches(columns=features + ["weight"], batch_size=BATCH_ROWS):
        if batch.num_rows:
            yield batch.to_pandas()


def _find_cutflow(prepared: PreparedDir, skim_dir: Path | None) -> Path | None:
    for folder in (skim_dir, prepared.skim_dir):
        if folder is not None and (Path(folder) / "cutflow.json").is_file():
            return Path(folder) / "cutflow.json"
    return None


def _importance(scorer: _Scorer, test: pd.DataFrame, rows: int) -> tuple[dict, dict] | None:
    """(normalised total gain, mean |SHAP|) per feature for XGBoost models, else None."""
    booster = getattr(scorer.model, "booster", None)
    if scorer.model.kind != "xgboost" or booster is None:
        return None
    import xgboost as xgb

    features = list(scorer.model.features)
    names = booster.feature_names
    # A booster trained without names reports f0, f1, ... in the order of features.json.
    by_name = {(names[i] if names else f"f{i}"): f for i, f in enumerate(features)}
    gain = {by_name.get(k, k): float(v) for k, v in booster.get_score(importance_type="total_gain").items()}
    sample = test.iloc[:rows]  # the test split is shuffled by prepare: the head is a random sample
    dmat = xgb.DMatrix(scorer.model_inputs(sample), feature_names=names)
    # All trees of the saved booster: the ones `TrainedModel.predict` scores with.
    contribs = booster.predict(dmat, pred_contribs=True)
    shap = np.abs(contribs[:, : len(features)]).mean(axis=0)  # last column is the bias
    return gain, {f: float(v) for f, v in zip(features, shap)}


@dataclass
class _Scored:
    """Scores of every model on one split, with the split's labels and physics weights."""

    scores: dict[str, np.ndarray]
    labels: np.ndarray
    weights: np.ndarray


@dataclass
class _Streamed:
    """What one pass over every prepared event gives: input histograms, correlations, and
    the scores on the training split (overtraining check) and the validation split (an
    AMS cut chosen away from the test events)."""

    hists: FeatureHistograms
    correlations: dict[int, WeightedCorrelation]
    signal_processes: set[str] = field(default_factory=set)
    scored: dict[str, _Scored] = field(default_factory=dict)
    data_events: int = 0


def _stream_events(prepared: PreparedDir, scorers: list[_Scorer], skim: Path | None, config: Config,
                   bar) -> _Streamed:
    """One bounded-memory pass over train/val/test (and pseudo-data)."""
    features = prepared.feature_order
    result = _Streamed(FeatureHistograms(features, prepared.stats["features"], n_bins=config.evaluate.n_bins),
                       {1: WeightedCorrelation(), 0: WeightedCorrelation()})
    parts: dict[str, dict[str, list]] = {split: {s.name: [] for s in scorers} for split in SCORED_SPLITS}
    labels: dict[str, list] = {split: [] for split in SCORED_SPLITS}
    weights: dict[str, list] = {split: [] for split in SCORED_SPLITS}
    rows = sum(prepared.dataset(s).count_rows() for s in SPLITS if prepared.has_split(s))
    task = bar.add_task("evaluate: stream events", total=rows)
    for split in SPLITS:
        if not prepared.has_split(split):
            continue
        for batch in prepared.iter_batches(split, features + EVENT_COLUMNS, batch_rows=BATCH_ROWS):
            result.signal_processes.update(batch.loc[batch["label"] == 1, "process"].unique())
            for label in (0, 1):
                mask = (batch["label"] == label).to_numpy()
                if mask.any():  # correlations are invariant under standardisation: no inversion
                    result.correlations[label].partial_fit(batch.loc[mask, features].to_numpy(),
                                                           batch.loc[mask, "weight"].to_numpy())
            result.hists.partial_fit(prepared.destandardise(batch, features))
            if split in SCORED_SPLITS:
                for scorer in scorers:
                    parts[split][scorer.name].append(scorer.predict(batch))
                labels[split].append(batch["label"].to_numpy())
                weights[split].append(batch["weight"].to_numpy(np.float64))
            bar.advance(task, len(batch))
    for batch in _data_frames(prepared, skim, config, features):
        result.hists.partial_fit(batch, process="data")
        result.data_events += len(batch)
    result.scored = {split: _Scored({name: np.concatenate(p) for name, p in parts[split].items()},
                                    np.concatenate(labels[split]), np.concatenate(weights[split]))
                     for split in SCORED_SPLITS if labels[split]}
    return result


def _ams_at_val_cut(scorer: _Scorer, scores: np.ndarray, y: np.ndarray, w: np.ndarray,
                    streamed: _Streamed, fractions: dict[str, tuple[float, float]], ev) -> dict | None:
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


def _model_metrics(scorer: _Scorer, scores: np.ndarray, test: pd.DataFrame, streamed: _Streamed,
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


def _draw_plots(out: Path, scorers: list[_Scorer], metrics: dict[str, dict], test: pd.DataFrame,
                test_scores: dict[str, np.ndarray], streamed: _Streamed, cutflow: pd.DataFrame | None,
                features: list[str], config: Config, bar) -> list[dict]:
    """Every plot; returns [{"section", "title", "file"}] in report order. Adds the
    XGBoost importances to ``metrics``."""
    ev, plot_dir, lumi_fb = config.evaluate, out / "plots", config.lumi_pb / 1000.0
    plot_dir.mkdir(parents=True, exist_ok=True)
    task = bar.add_task("evaluate: plots", total=len(features) + 4 + 2 * len(scorers) + (cutflow is not None))
    plots: list[dict] = []

    def add(section: str, title: str, path: Path) -> None:
        plots.append({"section": section, "title": title, "file": str(path.relative_to(out))})
        bar.advance(task)

    add("performance", "ROC curves (weighted, test split)",
        plot_roc({n: m["_roc"] for n, m in metrics.items()}, plot_dir / "roc.png",
                 working_points=ev.background_efficiencies, lumi_fb=lumi_fb, dpi=ev.dpi))
    add("performance", "AMS against the score cut (yields at the full luminosity)",
        plot_ams({n: m["_scan"] for n, m in metrics.items()}, plot_dir / "ams.png", lumi_fb=lumi_fb, dpi=ev.dpi))
    train = streamed.scored["train"]
    for scorer in scorers:
        name = scorer.name
        add("overtraining", f"{name}: score distributions, train vs test",
            plot_scores(name, (train.scores[name], train.labels, train.weights),
                        (test_scores[name], test["label"].to_numpy(), test["weight"].to_numpy()),
                        metrics[name]["_ks"], plot_dir / f"scores_{_slug(name)}.png", dpi=ev.dpi))
        importance = _importance(scorer, test, ev.shap_rows)
        if importance is None:  # not a tree model
            bar.advance(task)
            continue
        gain, shap = importance
        metrics[name]["importance"] = {"total_gain": gain, "mean_abs_shap": shap}
        add("importance", f"{name}: feature importance (gain, mean |SHAP|)",
            plot_importance(name, gain, shap, plot_dir / f"importance_{_slug(name)}.png", dpi=ev.dpi))
    for label, cls in ((1, "signal"), (0, "background")):
        add("correlations", f"Feature correlations, {cls}",
            plot_correlation(streamed.correlations[label].correlation_, features,
                             title=f"Weighted correlations: {cls}", path=plot_dir / f"correlation_{cls}.png",
                             dpi=ev.dpi))
    for feature in features:
        add("inputs", f"Input feature {feature}",
            plot_feature(streamed.hists.hists_[feature], signal_processes=sorted(streamed.signal_processes),
                         path=plot_dir / f"feature_{feature}.png", lumi_fb=lumi_fb, dpi=ev.dpi))
    if cutflow is not None:
        add("cutflow", "Cutflow of the skim", plot_cutflow_table(cutflow, path=plot_dir / "cutflow.png", dpi=ev.dpi))
    return plots


def _check_prepared_match(models: list, model_dirs: list[Path], prepared: PreparedDir, *,
                          allow_other_prepared: bool) -> tuple[dict[str, bool], list[str]]:
    """Whether each model was trained on this prepared folder; refused unless allowed.

    A model trained on another preparation (another seed, other inputs) may have learnt
    from events that are test events here: its figures would be optimistic. Returns
    {model dir: matches} and the warnings for metrics.json and the report.
    """
    matches, warnings = {}, []
    for model, model_dir in zip(models, model_dirs):
        recorded = model.info.get("prepared_fingerprint")
        ok = recorded is not None and recorded == prepared.fingerprint
        matches[str(model_dir)] = ok
        if ok:
            continue
        trained_on = model.info.get("prepared_dir", "an unrecorded folder")
        why = (f"model {model_dir} was trained on another preparation ({trained_on}, prepared fingerprint "
               f"{str(recorded)[:12]}) than {prepared.path} (fingerprint {str(prepared.fingerprint)[:12]})"
               if recorded is not None else
               f"model {model_dir} does not record which preparation it was trained on")
        if not allow_other_prepared:
            raise StageInputError(f"{why}: its test events may be events it was trained on; evaluate it "
                                  "on the prepared folder it was trained on, or pass "
                                  "--allow-other-prepared to evaluate it anyway (marked in metrics.json "
                                  "and the report)")
        warnings.append(f"{why}; evaluated anyway (--allow-other-prepared): its test events may "
                        "include events it was trained on, so its figures may be optimistic")
    return matches, warnings


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
    from analysis.evaluate.report import collect_provenance, write_report

    model_dirs = [Path(d) for d in model_dirs]
    prepared = open_prepared(prep_dir)
    if not prepared.has_split("train"):
        raise StageInputError(f"{prepared.path / 'train'}: no training split for the overtraining "
                              "check; re-run `hepprep prepare`")
    models = load_models(model_dirs)
    for model, model_dir in zip(models, model_dirs):
        check_model_features(model, model_dir, prepared)
    prepared_match, warnings = _check_prepared_match(models, model_dirs, prepared,
                                                     allow_other_prepared=allow_other_prepared)
    names = model_names(model_dirs, models)
    scorers = [_Scorer(n, m, d, prepared) for n, m, d in zip(names, models, model_dirs)]
    skim = Path(skim_dir) if skim_dir is not None else prepared.skim_dir
    features = prepared.feature_order
    sums = _class_weight_sums(prepared)
    fractions = {"test": _split_fractions(sums, "test", prepared.path / "test")}
    if all(sums["val"][label] > 0 for label in (0, 1)):
        fractions["val"] = _split_fractions(sums, "val", prepared.path / "val")
    cutflow_path = _find_cutflow(prepared, skim)
    cutflow = read_cutflow(cutflow_path) if cutflow_path else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    with progress_bar(quiet=not progress) as bar:
        task = bar.add_task("evaluate: score test", total=len(scorers))
        test = prepared.read("test", features + EVENT_COLUMNS)
        test_scores = {}
        for scorer in scorers:
            test_scores[scorer.name] = scorer.predict(test)
            bar.advance(task)
        streamed = _stream_events(prepared, scorers, skim, config, bar)
        model_metrics = {s.name: _model_metrics(s, test_scores[s.name], test, streamed, fractions, config.evaluate)
                         for s in scorers}
        plots = _draw_plots(out, scorers, model_metrics, test, test_scores, streamed, cutflow, features,
                            config, bar)

    y_test, w_test = test["label"].to_numpy(), test["weight"].to_numpy(np.float64)
    metrics = {
        "prep_dir": str(prepared.path),
        "test_fraction": {"signal": fractions["test"][0], "background": fractions["test"][1],
                          "nominal": (prepared.split_fractions() or [None] * 3)[2]},
        "test_events": {"signal": int((y_test == 1).sum()), "background": int((y_test == 0).sum())},
        "test_yield": {"signal": float(w_test[y_test == 1].sum()), "background": float(w_test[y_test == 0].sum())},
        "data_events": streamed.data_events,
        "negative_weights": {"yields": "signed", "roc_ks_correlation": "abs"},
        "models": {name: {**{k: v for k, v in m.items() if not k.startswith("_")},
                          "trained_on_this_prepared": prepared_match[m["model_dir"]]}
                   for name, m in model_metrics.items()},
        "warnings": warnings,
        "plots": [p["file"] for p in plots],
    }
    write_json_atomic(out / "metrics.json", metrics)
    provenance = collect_provenance(model_dirs, prepared, skim, cutflow_path, config)
    report = write_report(out, metrics=metrics, plots=plots, cutflow=cutflow, config=config,
                          provenance=provenance)
    console = stage_console(quiet=not progress)
    for warning in warnings:
        console.print(f"evaluate: warning: {warning}", soft_wrap=True)
    for name, m in metrics["models"].items():
        console.print(f"{name}: AUC {m['roc_auc']:.4f}, AMS {m['ams']['ams']:.3f} at cut "
                      f"{m['ams']['best_cut']:.3f} (s {m['ams']['s']:.1f}, b {m['ams']['b']:.1f})")
    console.print(f"report: {report}")
    return report
