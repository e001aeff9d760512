"""Evaluation stage: scoring every prepared event with each model, in one bounded-memory pass.

A `Scorer` feeds a model the prepared (standardised) columns it expects; `stream_events`
goes once over train, val and test (and the pseudo-data) in batches of `BATCH_ROWS`,
filling the input-feature histograms and correlations and keeping the train and val
scores for the overtraining check and the AMS cut choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from analysis.config import Config
from analysis.core.jet_tables import StandardisedColumns
from analysis.core.skimmed import skim_parts
from analysis.core.standardise import Standardisation
from analysis.errors import StageInputError
from analysis.evaluate.input_plots import FeatureHistograms, WeightedCorrelation
from analysis.evaluate.inputs import EVENT_COLUMNS, SPLITS, PreparedDir, standardisation_matches

__all__ = ["BATCH_ROWS", "SCORED_SPLITS", "Scored", "Scorer", "Streamed", "class_weight_sums", "data_frames",
           "feature_importance", "find_cutflow", "list_columns_of", "split_fractions", "stream_events"]

BATCH_ROWS = 200_000  # rows per streamed batch: bounds the memory of the feature histograms
LIST_BATCH_ROWS = 20_000  # with a tagger's constituent lists (~100 per jet and feature) beside them
SCORED_SPLITS = ("train", "val")  # besides test: overtraining check, and the AMS cut choice


class Scorer:
    """A loaded model with what is needed to feed it prepared (standardised) columns."""

    def __init__(self, name: str, model, model_dir: Path, prepared: PreparedDir):
        self.name, self.model, self.model_dir, self.prepared = name, model, model_dir, prepared
        flat = set(prepared.feature_order)
        # A tagger's constituent lists: read beside the flat columns and passed to it as arrow.
        self.lists = [c for c in model.input_columns if c not in flat]
        self._flat_inputs = [c for c in model.input_columns if c in flat]
        # Same mean/std as the prepared directory: pass standardised columns as they are;
        # otherwise hand over raw values and let the model apply its own standardisation.
        self.same_standardisation = standardisation_matches(model, prepared)

    def predict(self, frame: pd.DataFrame, lists: pa.Table | None = None) -> np.ndarray:
        """The model's answer for each row of ``frame`` (and of ``lists``, a tagger's list columns)."""
        if self.lists:
            return self._predict_tagger(frame, lists)
        features = list(self.model.features)
        if self.same_standardisation:
            return np.asarray(self.model.predict(frame[features], standardised=True), dtype=np.float64)
        raw = self.prepared.destandardise(frame[features], features)
        return np.asarray(self.model.predict(raw, standardised=False), dtype=np.float64)

    def _predict_tagger(self, frame: pd.DataFrame, lists: pa.Table | None) -> np.ndarray:
        if lists is None or any(c not in lists.column_names for c in self.lists):
            raise StageInputError(f"{self.model_dir}: the tagger reads the list columns {', '.join(self.lists)}; "
                                  "evaluation did not read them")
        flat = self._flat_inputs
        if not self.same_standardisation:
            frame = self.prepared.destandardise(frame[flat], flat) if flat else frame
            undo = StandardisedColumns(self.prepared.stats, source=str(self.prepared.path / "stats.json"))
            lists = pa.table({c: undo.list_values(lists, c, raw=True) for c in self.lists})
        table = lists.select(self.lists)  # a tagger without jet features reads no flat column
        for name in flat:
            table = table.append_column(name, pa.array(frame[name].to_numpy()))
        return np.asarray(self.model.predict(table, standardised=self.same_standardisation), dtype=np.float64)

    def model_inputs(self, frame: pd.DataFrame) -> np.ndarray:
        """Feature matrix as the model saw it in training (its own standardisation)."""
        features = list(self.model.features)
        if self.same_standardisation:
            return frame[features].to_numpy(np.float32)
        raw = self.prepared.destandardise(frame[features], features)
        return Standardisation.from_stats(self.model.stats, features).transform(raw.to_numpy(np.float64))


def list_columns_of(scorers: list[Scorer]) -> list[str]:
    """The list columns any of the models reads (a tagger's constituents), in a stable order."""
    return list(dict.fromkeys(c for scorer in scorers for c in scorer.lists))


def class_weight_sums(prepared: PreparedDir) -> dict[str, dict[int, float]]:
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


def split_fractions(sums: dict[str, dict[int, float]], split: str, path: Path) -> tuple[float, float]:
    """(signal, background) fraction of the full yield that ``split`` holds."""
    fractions = []
    for label, cls in ((1, "signal"), (0, "background")):
        total = sum(sums[s][label] for s in SPLITS)
        if not sums[split][label] > 0 or not total > 0:
            raise StageInputError(f"{path}: the {split} split has no {cls} yield (sum of weight "
                                  f"{sums[split][label]:g}); evaluation needs both classes")
        fractions.append(min(1.0, sums[split][label] / total))
    return fractions[0], fractions[1]


def data_frames(prepared: PreparedDir, skim_dir: Path | None, config: Config, features: list[str]):
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


def find_cutflow(prepared: PreparedDir, skim_dir: Path | None) -> Path | None:
    for folder in (skim_dir, prepared.skim_dir):
        if folder is not None and (Path(folder) / "cutflow.json").is_file():
            return Path(folder) / "cutflow.json"
    return None


def feature_importance(scorer: Scorer, test: pd.DataFrame, rows: int) -> tuple[dict, dict] | None:
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
    if contribs.ndim == 3:  # one set per class (or regressed column): |SHAP| summed over them
        contribs = np.abs(contribs).sum(axis=1)
    shap = np.abs(contribs[:, : len(features)]).mean(axis=0)  # last column is the bias
    return gain, {f: float(v) for f, v in zip(features, shap)}


@dataclass
class Scored:
    """Scores of every model on one split, with the split's labels and physics weights."""

    scores: dict[str, np.ndarray]
    labels: np.ndarray
    weights: np.ndarray


@dataclass
class Streamed:
    """What one pass over every prepared event gives: input histograms, correlations, and
    the scores on the training split (overtraining check) and the validation split (an
    AMS cut chosen away from the test events)."""

    hists: FeatureHistograms
    correlations: dict[int, WeightedCorrelation]
    signal_processes: set[str] = field(default_factory=set)
    scored: dict[str, Scored] = field(default_factory=dict)
    data_events: int = 0


def score_test(prepared: PreparedDir, scorers: list[Scorer], columns: list[str]
               ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The test split's ``columns`` (a DataFrame) and each scorer's scores of its rows.

    A tagger's constituent lists are read a batch of jets at a time and scored there: only
    the flat columns of the whole split are held, as for an event-level folder.
    """
    lists = list_columns_of(scorers)
    if not lists:
        test = prepared.read("test", columns)
        return test, {s.name: s.predict(test) for s in scorers}
    frames, scores = [], {s.name: [] for s in scorers}
    for batch, batch_lists in prepared.iter_with_lists("test", columns, lists, batch_rows=LIST_BATCH_ROWS):
        frames.append(batch)
        for scorer in scorers:
            scores[scorer.name].append(scorer.predict(batch, batch_lists))
    if not frames:  # an empty test split: its (empty) columns as a whole read gives them
        test, test_lists = prepared.read_with_lists("test", columns, lists)
        return test, {s.name: s.predict(test, test_lists) for s in scorers}
    return pd.concat(frames, ignore_index=True), {name: np.concatenate(p) for name, p in scores.items()}


def stream_events(prepared: PreparedDir, scorers: list[Scorer], skim: Path | None, config: Config,
                   bar) -> Streamed:
    """One bounded-memory pass over train/val/test (and pseudo-data)."""
    features = prepared.feature_order
    list_columns = list_columns_of(scorers)
    result = Streamed(FeatureHistograms(features, prepared.stats["features"], n_bins=config.evaluate.n_bins,
                                        analysis=prepared.analysis),
                       {1: WeightedCorrelation(), 0: WeightedCorrelation()})
    parts: dict[str, dict[str, list]] = {split: {s.name: [] for s in scorers} for split in SCORED_SPLITS}
    labels: dict[str, list] = {split: [] for split in SCORED_SPLITS}
    weights: dict[str, list] = {split: [] for split in SCORED_SPLITS}
    rows = sum(prepared.dataset(s).count_rows() for s in SPLITS if prepared.has_split(s))
    task = bar.add_task("evaluate: stream events", total=rows)
    for split in SPLITS:
        if not prepared.has_split(split):
            continue
        # The lists are read only where the models are scored here (test was scored apart).
        lists_here = list_columns if split in SCORED_SPLITS else []
        for batch, lists in prepared.iter_with_lists(split, features + EVENT_COLUMNS, lists_here,
                                                     batch_rows=LIST_BATCH_ROWS if lists_here else BATCH_ROWS):
            result.signal_processes.update(batch.loc[batch["label"] == 1, "process"].unique())
            for label in (0, 1):
                mask = (batch["label"] == label).to_numpy()
                if mask.any():  # correlations are invariant under standardisation: no inversion
                    result.correlations[label].partial_fit(batch.loc[mask, features].to_numpy(),
                                                           batch.loc[mask, "weight"].to_numpy())
            result.hists.partial_fit(prepared.destandardise(batch, features))
            if split in SCORED_SPLITS:
                for scorer in scorers:
                    parts[split][scorer.name].append(scorer.predict(batch, lists))
                labels[split].append(batch["label"].to_numpy())
                weights[split].append(batch["weight"].to_numpy(np.float64))
            bar.advance(task, len(batch))
    for batch in data_frames(prepared, skim, config, features):
        result.hists.partial_fit(batch, process="data")
        result.data_events += len(batch)
    result.scored = {split: Scored({name: np.concatenate(p) for name, p in parts[split].items()},
                                    np.concatenate(labels[split]), np.concatenate(weights[split]))
                     for split in SCORED_SPLITS if labels[split]}
    return result
