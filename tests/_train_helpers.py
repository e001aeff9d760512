"""Training tests: a small prepared directory that follows DESIGN.md "Prepared Parquet".

The training stage must be testable without running generate -> skim -> prepare, so this
writes a toy prepared directory by hand: Gaussian features in standardised units whose
means and widths depend on the class (separable, but not trivially: AUC around 0.85-0.9),
a physics `weight` with the signal/background imbalance of the real samples, a
class-balanced `train_weight`, several files with several row groups per split, and a
stats.json in raw units.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.config import DEFAULT_FEATURES

SPLITS = ("train", "val", "test")


def _toy_rows(n: int, features: list[str], rng: np.random.Generator,
              signal_fraction: float) -> dict[str, np.ndarray]:
    label = (rng.random(n) < signal_fraction).astype(np.int8)
    is_sig = label == 1
    cols: dict[str, np.ndarray] = {}
    for i, name in enumerate(features):
        # Every third feature carries a mean shift, every fourth a narrower signal width:
        # a linear model gets part of the way, trees and networks a bit further.
        shift = 0.45 if i % 3 == 0 else 0.0
        width = 0.7 if i % 4 == 1 else 1.0
        z = rng.standard_normal(n)
        z = np.where(is_sig, shift + width * z, z)
        cols[name] = z.astype(np.float32)
    return {"label": label, **cols}


def _balanced_train_weight(label: np.ndarray, weight: np.ndarray) -> np.ndarray:
    # DESIGN.md: each class gets equal total weight and the mean train_weight is 1.
    out = np.empty_like(weight)
    n = len(weight)
    for cls in (0, 1):
        mask = label == cls
        out[mask] = weight[mask] * (n / 2) / weight[mask].sum()
    return out


def write_prepared_dir(root: str | Path, *, rows: tuple[int, int, int] = (6000, 2000, 2000),
                       features: list[str] | None = None, row_group_rows: int = 500,
                       file_rows: int = 2500, signal_fraction: float = 0.3,
                       seed: int = 0) -> Path:
    """Write a toy prepared directory; returns its path.

    Parameters
    ----------
    root : str or Path
        Folder to create (``train/``, ``val/``, ``test/``, ``stats.json``, ``manifest.json``).
    rows : (int, int, int)
        Rows of train, val and test; a 0 leaves that split out (no folder).
    features : list of str or None
        Feature columns (default: config.DEFAULT_FEATURES), standardised float32.
    row_group_rows, file_rows : int
        Row-group and file sizes, so readers see several files with several row groups.
    """
    root = Path(root)
    features = list(features or DEFAULT_FEATURES)
    rng = np.random.default_rng(seed)
    # Raw-unit statistics: raw = standardised * std + mean (e.g. GeV-scale pt features).
    means = {f: float(10.0 * (i + 1)) for i, f in enumerate(features)}
    stds = {f: float(2.0 + i) for i, f in enumerate(features)}
    event = 0
    class_totals = {}
    for split, n in zip(SPLITS, rows):
        if n == 0:
            continue
        cols = _toy_rows(n, features, rng, signal_fraction)
        label = cols.pop("label")
        # Physics yields: few heavy background events against many light signal ones.
        weight = np.where(label == 1, 0.02, 1.5) * rng.uniform(0.5, 1.5, n)
        table = pa.table({
            "run": pa.array(np.full(n, 194_000, np.int32)),
            "luminosityBlock": pa.array(np.arange(n, dtype=np.uint32) // 100),
            "event": pa.array(np.arange(event, event + n, dtype=np.uint64)),
            "dataset": pa.array(np.where(label == 1, "GluGluToHToTauTau", "DYJetsToLL")).dictionary_encode(),
            "process": pa.array(np.where(label == 1, "ggH", "DY")).dictionary_encode(),
            "label": pa.array(label),
            "weight": pa.array(weight),
            **{f: pa.array(c) for f, c in cols.items()},
            "train_weight": pa.array(_balanced_train_weight(label, weight)),
            "split": pa.array([split] * n),
        })
        event += n
        class_totals[split] = {"signal": float(weight[label == 1].sum()),
                               "background": float(weight[label == 0].sum())}
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for k, start in enumerate(range(0, n, file_rows)):
            pq.write_table(table.slice(start, file_rows), folder / f"part-{k:05d}.parquet",
                           row_group_size=row_group_rows)
    stats = {
        "feature_order": features,
        "features": {f: {"mean": means[f], "std": stds[f], "min": means[f] - 5 * stds[f],
                         "max": means[f] + 5 * stds[f], "median": means[f],
                         "q16": means[f] - stds[f], "q84": means[f] + stds[f]} for f in features},
        "transform": "standardised = (raw - mean) / std",
        "computed_on": "train",
        "sum_weights": 0.0,
        "negative_weights": "keep",
        "split": {"fractions": [0.6, 0.2, 0.2], "seed": seed},
        "class_totals": class_totals,
    }
    (root / "stats.json").write_text(json.dumps(stats, indent=1))
    write_prepared_manifest(root, source="tests/_train_helpers.py", rows=dict(zip(SPLITS, rows)))
    return root


def write_prepared_manifest(root: str | Path, **extra) -> Path:
    """The prepared manifest.json of a hand-written prepared folder: ``"stage": "prepare"``,
    every ``<split>/*.parquet`` with its rows (training and evaluation read what it lists),
    and a fingerprint of those files (what a model records of its preparation)."""
    import hashlib

    root = Path(root)
    splits = {}
    for split in (*SPLITS, "data"):
        files = sorted((root / split).glob("*.parquet"))
        splits[split] = {"rows": 0, "files": []}
        for path in files:
            rows = pq.read_metadata(path).num_rows
            splits[split]["rows"] += rows
            splits[split]["files"].append({"path": f"{split}/{path.name}", "rows": rows})
    blob = json.dumps([(f["path"], f["rows"], (root / f["path"]).stat().st_size)
                       for s in splits.values() for f in s["files"]])
    manifest = {"stage": "prepare", **extra, "splits": splits,
                "fingerprint": hashlib.sha256(blob.encode()).hexdigest()}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root


def read_split(root: str | Path, split: str) -> "pandas.DataFrame":  # noqa: F821
    """All rows of one split as pandas (tests only: small data)."""
    files = sorted((Path(root) / split).glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()


def generated_prepared_dir(out: str | Path, *, events: int, scheduler: str | None = None,
                           seed: int = 2012) -> Path:
    """generate -> skim -> prepare on the embedded default sample with ``events`` events.

    The real upstream stages, with the default config except the sample size; the skim runs
    in-process (iterative executor) and prepare on ``scheduler`` when given. Returns the
    prepared directory ``out/prepared``.
    """
    from analysis.config import config_from_dict
    from analysis.generate.runner import generate_samples
    from analysis.prepare.runner import run_prepare
    from analysis.skim.runner import run_skim

    out = Path(out)
    config = config_from_dict({"generate": {"events": events, "seed": seed},
                               "skim": {"executor": "iterative"}})
    fileset = generate_samples(out / "generated", config, progress=False)
    run_skim(fileset, out / "skim", config, progress=False)
    run_prepare(out / "skim", out / "prepared", config, scheduler=scheduler, progress=False)
    return out / "prepared"
