"""Evaluation stage: reading what the earlier stages wrote — prepared splits, models, cutflow.

Everything here checks its input and fails with one line naming the folder or file, what is
missing or inconsistent, and the fix (`StageInputError`), because evaluation is where the
outputs of three other stages meet. Feature columns of the prepared directory are
standardised; `PreparedDir.destandardise` turns them back into physical units with the
directory's own stats.json (raw = standardised * std + mean).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from analysis.core.features import feature_differences
from analysis.core.io import read_json
from analysis.core.prepared import PreparedListing, read_prepared_listing
from analysis.core.standardise import Standardisation
from analysis.errors import StageInputError

__all__ = ["PreparedDir", "check_model_features", "check_prepared_match", "load_models", "open_prepared",
           "read_cutflow", "standardisation_matches"]

SPLITS = ("train", "val", "test")
# Columns evaluation needs beside the features (DESIGN.md "Skim Parquet").
EVENT_COLUMNS = ["weight", "label", "process", "dataset"]
OPTIONAL_COLUMNS = ("process", "dataset")  # filled from the label when a prepared table lacks them


@dataclass
class PreparedDir:
    """A prepared directory: train/val/test (and optional data) Parquet with stats.json.

    Only the files its manifest lists are read (`analysis.core.prepared`).
    """

    path: Path
    stats: dict
    listing: PreparedListing

    @property
    def manifest(self) -> dict:
        return self.listing.manifest

    @property
    def fingerprint(self) -> str | None:
        return self.listing.fingerprint

    @property
    def feature_order(self) -> list[str]:
        return list(self.stats["feature_order"])

    def has_split(self, split: str) -> bool:
        return self.listing.has_split(split)

    def dataset(self, split: str) -> pads.Dataset:
        """The pyarrow dataset of one split (``train``, ``val``, ``test`` or ``data``)."""
        if not self.has_split(split):
            raise StageInputError(f"{self.path / split}: the prepared manifest lists no files of this "
                                  f"split; re-run `hepprep prepare` into {self.path}")
        return pads.dataset([str(p) for p in self.listing.files(split)], format="parquet")

    def _present(self, dataset: pads.Dataset, columns: list[str]) -> list[str]:
        names = set(dataset.schema.names)
        missing = [c for c in columns if c not in names and c not in OPTIONAL_COLUMNS]
        if missing:
            raise StageInputError(f"{self.path}: prepared Parquet has no column(s) {', '.join(missing)}; "
                                  f"it holds {', '.join(sorted(names))}; re-run `hepprep prepare`")
        return [c for c in columns if c in names]

    def read(self, split: str, columns: list[str]) -> pd.DataFrame:
        """One whole split as a DataFrame (string columns as str, not dictionary).

        ``process`` and ``dataset`` may be absent (a prepared flat table has no process):
        they are then filled with "signal"/"background"/"data" from the label.
        """
        return self.read_with_lists(split, columns, [])[0]

    def iter_batches(self, split: str, columns: list[str], *, batch_rows: int = 200_000
                     ) -> Iterator[pd.DataFrame]:
        """Stream a split in bounded-size batches (memory set by ``batch_rows``)."""
        for frame, _ in self.iter_with_lists(split, columns, [], batch_rows=batch_rows):
            yield frame

    def read_with_lists(self, split: str, columns: list[str], lists: list[str]) -> tuple[pd.DataFrame, pa.Table]:
        """`read`, and the list columns ``lists`` (a tagger's constituents) of the same rows as arrow."""
        dataset = self.dataset(split)
        table = dataset.to_table(columns=self._present(dataset, list(dict.fromkeys(columns + lists))))
        return _split_lists(table, columns, lists)

    def iter_with_lists(self, split: str, columns: list[str], lists: list[str], *, batch_rows: int
                        ) -> Iterator[tuple[pd.DataFrame, pa.Table]]:
        """`iter_batches`, each batch with the list columns ``lists`` of its rows as arrow."""
        dataset = self.dataset(split)
        wanted = self._present(dataset, list(dict.fromkeys(columns + lists)))
        for batch in dataset.to_batches(columns=wanted, batch_size=batch_rows):
            if batch.num_rows:
                yield _split_lists(pa.Table.from_batches([batch]), columns, lists)

    def destandardise(self, frame: pd.DataFrame, features: list[str] | None = None) -> pd.DataFrame:
        """Feature columns back in physical units: raw = standardised * std + mean (float64)."""
        frame = frame.copy()
        standardisation = self.standardisation
        for name in features or self.feature_order:
            frame[name] = standardisation.inverse_column(standardisation.index(name), frame[name].to_numpy())
        return frame

    def physical(self, frame: pd.DataFrame, column: str) -> np.ndarray:
        """One column of ``frame`` in physical units, float64 (a feature is stored standardised)."""
        if column in self.feature_order:
            return self.destandardise(frame[[column]], [column])[column].to_numpy(np.float64)
        return frame[column].to_numpy(np.float64)

    @property
    def standardisation(self) -> Standardisation:
        """The directory's standardisation (its stats.json)."""
        return Standardisation.from_stats(self.stats, source=str(self.path / "stats.json"))

    @property
    def analysis(self) -> str | None:
        """The skim processor that wrote the feature columns (None: a flat table, or not recorded)."""
        return (self.manifest.get("skim") or {}).get("processor")

    @property
    def skim_dir(self) -> Path | None:
        """The skim directory this was prepared from, when the manifest names it."""
        # prepare writes the resolved skim folder as "source" (a file for a flat-table input)
        for key in ("skim_dir", "source"):
            value = self.manifest.get(key)
            if isinstance(value, str) and value:
                path = Path(value)
                return path if path.is_absolute() else (self.path / path).resolve()
        return None

    def split_fractions(self) -> list[float] | None:
        split = self.stats.get("split")
        if isinstance(split, dict) and isinstance(split.get("fractions"), list):
            return [float(f) for f in split["fractions"]]
        return None


def _complete(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    for name in OPTIONAL_COLUMNS:
        if name in columns and name not in frame.columns:
            if "label" not in frame.columns:
                raise StageInputError(f"prepared Parquet has neither {name!r} nor 'label'")
            frame[name] = np.select([frame["label"] == 1, frame["label"] == 0], ["signal", "background"],
                                    default="data")
    return frame


def _split_lists(table: pa.Table, columns: list[str], lists: list[str]) -> tuple[pd.DataFrame, pa.Table]:
    """The flat ``columns`` as pandas (list columns as numpy object arrays would cost a copy per jet)."""
    flat = [c for c in dict.fromkeys(columns) if c in table.column_names]
    return _complete(_to_pandas(table.select(flat)), columns), table.select(lists)


def _to_pandas(table) -> pd.DataFrame:
    frame = table.to_pandas()
    for name in ("process", "dataset"):
        if name in frame.columns and not pd.api.types.is_string_dtype(frame[name].dtype):
            frame[name] = frame[name].astype(str)
    return frame


def open_prepared(prep_dir: str | Path) -> PreparedDir:
    """Open and check a prepared directory (stats.json present, a non-empty test split)."""
    path = Path(prep_dir)
    if not path.is_dir():
        raise StageInputError(f"{path}: no such prepared directory; run `hepprep prepare SKIMDIR --out {path}`")
    stats = read_json(path / "stats.json", "stats.json (feature statistics of `hepprep prepare`)")
    for key in ("feature_order", "features"):
        if key not in stats:
            raise StageInputError(f"{path / 'stats.json'}: no {key!r} key; it was not written by "
                                  "`hepprep prepare` or is from an older version: re-run prepare")
    prepared = PreparedDir(path=path, stats=stats, listing=read_prepared_listing(path))
    if not prepared.has_split("test"):
        raise StageInputError(f"{path / 'test'}: no test split to evaluate on; re-run `hepprep prepare` "
                              f"with a test fraction > 0 (--split 0.6,0.2,0.2)")
    return prepared


def _load_one(model_dir: Path):
    from analysis.train.predict import load_model

    return load_model(model_dir)


def load_models(model_dirs: list[str | Path]) -> list:
    """Load each model directory with `analysis.train.predict.load_model` (the one prediction API).

    Two models with the same name (``models/a/xgboost``, ``models/b/xgboost``) are told
    apart by their parent folder in `names` of the returned order.
    """
    if not model_dirs:
        raise StageInputError("no model directory given: pass at least one MODELDIR "
                              "(e.g. `hepprep evaluate models/xgboost prepared --out eval`)")
    models = []
    for model_dir in model_dirs:
        path = Path(model_dir)
        if not path.is_dir():
            raise StageInputError(f"{path}: no such model directory; train one with "
                                  f"`hepprep train PREPDIR --model xgboost --out {path}`")
        models.append(_load_one(path))
    return models


def model_names(model_dirs: list[str | Path], models: list) -> list[str]:
    """Unique display names: the model's name, or parent/name when two collide."""
    names = [str(getattr(m, "name", Path(d).name)) for d, m in zip(model_dirs, models)]
    if len(set(names)) == len(names):
        return names
    return [f"{Path(d).resolve().parent.name}/{n}" if names.count(n) > 1 else n
            for d, n in zip(model_dirs, names)]


def check_model_features(model, model_dir: str | Path, prepared: PreparedDir) -> None:
    """One-line `StageInputError` when a model's features differ from the prepared directory's."""
    wanted, have = list(model.features), prepared.feature_order
    differences = feature_differences(wanted, have, missing="missing from the prepared directory",
                                      extra="not used by the model")
    if differences is None:
        return
    raise StageInputError(
        f"model {Path(model_dir)} was trained on {len(wanted)} features but prepared directory "
        f"{prepared.path} has {len(have)} ({differences}); evaluate the model on the "
        "prepared directory it was trained on, or re-train it on this one")


def standardisation_matches(model, prepared: PreparedDir, *, rtol: float = 1e-9) -> bool:
    """True when the model's stored mean/std equal the prepared directory's for every feature.

    Then the standardised columns can go to the model as they are; otherwise evaluation
    hands it raw values and the model applies its own standardisation.
    A tagger (a model with a ``layout``) also reads constituent lists: their mean/std
    (stats.json ``constituents``) must match as well.
    """
    try:
        mine = Standardisation.from_stats(model.stats, model.features)
    except StageInputError:
        return False
    if not mine.matches(prepared.standardisation, rtol=rtol):
        return False
    if getattr(model, "layout", None) is None:
        return True
    ours, theirs = model.stats.get("constituents"), prepared.stats.get("constituents")
    if not ours or not theirs:
        return ours == theirs
    try:
        return Standardisation.from_stats(ours, source="model constituents").matches(
            Standardisation.from_stats(theirs, source="prepared constituents"), rtol=rtol)
    except StageInputError:
        return False


def _cutflow_rows(dataset: str, entry: Any) -> list[dict]:
    """Normalise one dataset's cutflow to rows {dataset, cut, events, sumw}."""

    def pick(d: dict, *keys):
        for key in keys:
            if key in d:
                return d[key]
        return None

    rows = []
    if isinstance(entry, dict) and isinstance(entry.get("cuts"), dict):
        # the skim's layout: {"process": ..., "label": ..., "cuts": {cut: {"events", "sum_weight"}}}
        entry = entry["cuts"]
    if isinstance(entry, dict) and isinstance(entry.get("cuts"), list):
        cuts = entry["cuts"]
        events = pick(entry, "events", "n", "counts", "entries") or [None] * len(cuts)
        sumw = pick(entry, "sumw", "sum_weight", "sum_weights", "weights", "weighted") or [None] * len(cuts)
        if cuts and isinstance(cuts[0], dict):  # [{"name"/"cut": ..., "events": ..., "sumw": ...}]
            return _cutflow_rows(dataset, cuts)
        rows = [{"cut": c, "events": e, "sumw": w} for c, e, w in zip(cuts, events, sumw)]
    elif isinstance(entry, dict):
        for cut, value in entry.items():
            if isinstance(value, dict):
                rows.append({"cut": cut, "events": pick(value, "events", "n", "count", "entries"),
                             "sumw": pick(value, "sumw", "sum_weight", "sum_weights", "weight", "weighted")})
            elif isinstance(value, (int, float)):
                rows.append({"cut": cut, "events": value, "sumw": None})
    elif isinstance(entry, list):
        for item in entry:
            if isinstance(item, dict):
                rows.append({"cut": pick(item, "cut", "name", "step"),
                             "events": pick(item, "events", "n", "count", "entries"),
                             "sumw": pick(item, "sumw", "sum_weight", "sum_weights", "weight", "weighted")})
    return [dict(r, dataset=dataset) for r in rows if r["cut"] is not None]


def read_cutflow(path: str | Path) -> pd.DataFrame:
    """The skim's cutflow.json as a tidy table: columns dataset, cut, events, sumw.

    Accepts the skim's ``{dataset: {"cuts": {cut: {"events": n, "sum_weight": w}}, ...}}``,
    ``{dataset: {cut: {"events": n, "sumw": w}}}`` and the list/column variants
    (``{dataset: {"cuts": [...], "events": [...], "sumw": [...]}}``), optionally under a
    top-level ``"datasets"`` key. Cut order is kept as written.
    """
    path = Path(path)
    data = read_json(path, "cutflow.json")
    if isinstance(data, dict) and isinstance(data.get("datasets"), dict):
        data = data["datasets"]
    if not isinstance(data, dict):
        raise StageInputError(f"{path}: expected an object with one entry per dataset, got {type(data).__name__}")
    rows = [row for dataset, entry in data.items() for row in _cutflow_rows(dataset, entry)]
    if not rows:
        raise StageInputError(f"{path}: no cuts found; expected {{dataset: {{cut: {{\"events\": n, \"sumw\": w}}}}}}")
    return pd.DataFrame(rows, columns=["dataset", "cut", "events", "sumw"])


def check_prepared_match(models: list, model_dirs: list[Path], prepared: PreparedDir, *,
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
