"""Prepare stage: what prepare reads (`PrepareInputs`) and the records it writes, manifest.json and stats.json.

The records (DESIGN.md "Prepared Parquet") are built from the reduced results of the passes
(`analysis.prepare.runner`); they depend on the rows and the settings only, never on timing
or workers, so a re-run writes the same. Sections a run does not use are left out: a
binary, flat-feature stats.json is unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from analysis.config import PrepareConfig
from analysis.core.target import Target
from analysis.prepare.constituents import ConstituentStatistics
from analysis.prepare.shuffle import InputUnit, ShufflePlan, split_names
from analysis.prepare.split import SPLIT_NAMES
from analysis.prepare.stats import WeightedFeatureStats
from analysis.prepare.weights import TrainWeightBalancer

__all__ = ["PrepareInputs", "prepare_manifest", "stats_record"]


@dataclasses.dataclass(frozen=True)
class PrepareInputs:
    """What prepare reads: Parquet files with identity, label, weight and feature columns.

    ``sources`` are the user's files (for the manifest and the re-run check); ``files`` the
    Parquet files actually read (the same for a skim; converted copies for a CSV table).
    ``upstream`` are the provenance inputs (the skim folder with its fingerprint); empty:
    the ``sources``, as files.
    """

    files: tuple[Path, ...]
    id_columns: tuple[str, ...]
    features: tuple[str, ...]
    source: str
    sources: tuple[Path, ...]
    skim: dict[str, Any] | None = None  # what prepare took from a skim (`prepare_io.SkimParts.record`)
    upstream: tuple[dict[str, Any], ...] = ()
    # Rows that are objects: the columns numbering the objects of an event (`split.OBJECT_INDEX_COLUMNS`)
    row_id_columns: tuple[str, ...] = ()


def prepare_manifest(inputs: PrepareInputs, prep: PrepareConfig, plan: ShufflePlan, written: list[dict[str, Any]],
                     skim_datasets: dict[str, list[float]], balancer: TrainWeightBalancer,
                     units: Sequence[InputUnit]) -> dict[str, Any]:
    """manifest.json of the prepared folder (DESIGN.md); checks every row once, Σweight per dataset."""
    splits: dict[str, Any] = {}
    prepared: dict[str, list[float]] = {}
    for name in split_names():
        files = sorted((f for f in written if f["path"].startswith(name + "/")), key=lambda f: f["path"])
        per_dataset: dict[str, list[float]] = {}
        for f in files:
            for ds, (n, w) in f["datasets"].items():
                for acc in (per_dataset.setdefault(ds, [0.0, 0.0]), prepared.setdefault(ds, [0.0, 0.0])):
                    acc[0] += n
                    acc[1] += w
        splits[name] = {"rows": sum(f["rows"] for f in files),
                        "files": [{"path": f["path"], "rows": f["rows"]} for f in files],
                        "datasets": {ds: {"rows": int(n), "sum_weight": w} for ds, (n, w) in sorted(per_dataset.items())}}
    datasets = {}
    for ds, (n, w) in sorted(skim_datasets.items()):
        got_n, got_w = prepared.get(ds, [0.0, 0.0])
        # Invariant of DESIGN.md: every event exactly once, Σweight per dataset preserved.
        if got_n != n or not math.isclose(got_w, w, rel_tol=1e-9, abs_tol=1e-12):
            raise RuntimeError(f"prepare lost events of {ds}: {n:.0f} rows / Σw {w!r} in, "
                               f"{got_n:.0f} rows / Σw {got_w!r} out")
        datasets[ds] = {"rows": int(n), "sum_weight": w, "prepared_sum_weight": got_w}
    return {
        "stage": "prepare",
        "source": inputs.source,
        **({"skim": inputs.skim} if inputs.skim is not None else {}),
        "inputs": [{"path": str(p), "bytes": p.stat().st_size} for p in inputs.sources],
        "input_pieces": len(units),
        "id_columns": list(inputs.id_columns),
        **({"row_id_columns": list(inputs.row_id_columns)} if inputs.row_id_columns else {}),
        "features": list(inputs.features),
        "prepare": prep.model_dump(mode="json"),
        "buckets": dict(zip(split_names(), plan.buckets)),
        "splits": splits,
        "datasets": datasets,
        "train_weight": balancer.summary(),
        **({"target": plan.target.stats_record()} if plan.target.kind != "binary" else {}),
        **_objects_records(plan, None),
    }


def stats_record(stats: WeightedFeatureStats, balancer: TrainWeightBalancer, prep: PrepareConfig,
                 inputs: PrepareInputs, target: Target, plan: ShufflePlan,
                 constituents: ConstituentStatistics | None = None) -> dict[str, Any]:
    """stats.json (DESIGN.md contract); depends on the training rows only."""
    train = 0
    notes = [f"{name}: constant on the training rows (std 0); stored std 1 so it standardises to 0"
             for name in stats.constant_features_]
    if constituents is not None:
        notes += [f"{name}: constant over the training rows' list entries (std 0); stored std 1"
                  for name in constituents.constant_features_]
    return {
        "feature_order": list(inputs.features),
        "features": stats.to_dict(),
        "transform": "standardised = (raw - mean) / std",
        "inverse": "raw = standardised * std + mean",
        "computed_on": "train",
        "weights": "train_weight (policy-applied weight x per-class scale)",
        "missing_values": "non-finite raw values (NaN, +-inf) are left out of the statistics "
                          "(counted per feature on the training rows: n_nan, n_inf) and are NaN "
                          "after standardisation (XGBoost treats NaN as missing, the network "
                          "imputes 0, the training mean)",
        "quantiles": f"weighted, from a sketch with bins 2^-{stats.mantissa_bits} of the value wide",
        "sum_weights": float(balancer.sum_weights_[train].sum()),
        "negative_weights": prep.negative_weights,
        "split": {"fractions": list(prep.split), "seed": prep.seed, "kfolds": prep.kfolds,
                  "id_columns": list(inputs.id_columns), "names": list(SPLIT_NAMES),
                  # rows that are objects: the object index orders the shuffle, never the split
                  **({"row_id_columns": list(plan.row_id_columns)} if plan.row_id_columns else {})},
        "class_totals": {cls: {"rows": int(balancer.counts_[train, c]),
                               "sum_weight": float(balancer.sum_weights_[train, c]),
                               "train_weight_scale": float(balancer.scale_[train, c])}
                         for c, cls in enumerate(balancer.class_names)},
        "notes": notes,
        # Only a multi-class or regression target has one: a binary stats.json is unchanged.
        **({"target": target.stats_record()} if target.kind != "binary" else {}),
        **_objects_records(plan, constituents),
    }


def _objects_records(plan: ShufflePlan, constituents: ConstituentStatistics | None) -> dict[str, Any]:
    """stats.json / manifest.json sections of list columns and flattening; none when not used."""
    out: dict[str, Any] = {}
    if constituents is not None:
        out["constituents"] = {
            "feature_order": list(constituents.feature_names),
            "features": constituents.to_dict(),
            "computed_on": "train",
            "over": "every real (unpadded) entry of the lists of the training rows",
            "weights": "the row's train_weight, on each of its entries",
            "transform": "each entry standardised = (raw - mean) / std, list<float32>; non-finite entries NaN",
            "method": "dask-awkward over the skim: Σw, Σwx, Σwx² of the flattened lists, float64",
        }
    if plan.flatten is not None and plan.flat is not None:
        out["flatten"] = {
            "variables": list(plan.flatten.variables), "bins": [list(b) for b in plan.flatten.bins],
            "weights": "train_weight = policy(weight) x class scale x W_class / (occupied bins x W_class,bin): "
                       "every occupied bin of a class the same total, per split; no row dropped",
            "outside": "values outside the edges count in the first or last bin",
            "classes": plan.flat.summary(),
        }
    return out
