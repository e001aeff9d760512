"""Prepare stage: skim Parquet -> train/val/test Parquet, stats.json, manifest.json, on dask.

`run_prepare` is what `hepprep prepare` and the notebooks call. It plans bounded input
pieces, runs the two passes of `analysis.prepare.shuffle` as dask tasks (LocalCluster, or an
existing scheduler), reduces the per-piece statistics and class totals in a fixed order
(so re-runs are byte-identical), and publishes the result atomically: everything is
written into a hidden sibling folder that is renamed to ``out_dir`` only when complete.
List columns (``[prepare.objects]``) get their statistics between the passes
(`analysis.prepare.constituents`); a flat (pt, eta) reweighting sums its bins before them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from analysis.config import Config, PrepareConfig, with_overrides
from analysis.core.cluster import dask_client
from analysis.core.io import atomic_dir, read_json, remove_stale_temp, write_json_atomic
from analysis.core.progress import progress_bar, stage_console
from analysis.core.provenance import build_provenance, file_input, folder_input
from analysis.core.skimmed import skim_fingerprint, skim_parts
from analysis.core.target import Target
from analysis.errors import StageInputError
from analysis.prepare.constituents import ConstituentStatistics, constituent_statistics
from analysis.prepare.flatten import FlatBinWeights
from analysis.prepare.outputs import check_out_dir, outputs_intact
from analysis.prepare.records import PrepareInputs, prepare_manifest, stats_record
from analysis.prepare.shuffle import InputUnit, ShufflePlan, bin_unit, scatter_unit, shuffle_bucket
from analysis.prepare.split import OBJECT_INDEX_COLUMNS, SKIM_ID_COLUMNS
from analysis.prepare.stats import WeightedFeatureStats
from analysis.prepare.weights import TrainWeightBalancer

__all__ = ["PrepareInputs", "prepare_inputs", "run_prepare"]

STATS_FILE = "stats.json"
MANIFEST_FILE = "manifest.json"


def _known_data_rows(meta: pq.FileMetaData, rg: int) -> int | None:
    """Real-data rows of a row group from its `label` min/max statistics, if they settle it.

    A skim file holds one dataset, so its label is constant and the count needs no read.
    """
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    if "label" not in names:
        return None
    stats = meta.row_group(rg).column(names.index("label")).statistics
    if stats is None or not stats.has_min_max or stats.min != stats.max:
        return None
    return meta.row_group(rg).num_rows if stats.min == -1 else 0


def _input_units(files: Sequence[Path], *, target_rows: int) -> list[InputUnit]:
    """Consecutive row groups of each file, about `target_rows` per piece (pass-1 memory)."""
    units: list[InputUnit] = []
    for path in files:
        try:
            meta = pq.ParquetFile(path).metadata
        except Exception as err:  # noqa: BLE001 - any reader failure is a bad input file
            raise StageInputError(f"{path}: not a readable Parquet file ({err})") from None
        current: list[int] = []
        rows, data = 0, 0
        for rg in range(meta.num_row_groups):
            current.append(rg)
            rows += meta.row_group(rg).num_rows
            known = _known_data_rows(meta, rg)
            data = None if data is None or known is None else data + known
            if rows >= target_rows or rg == meta.num_row_groups - 1:
                if rows:
                    units.append(InputUnit(len(units), str(path), tuple(current), rows, data))
                current, rows, data = [], 0, 0
    return units


def _count_labels(unit: InputUnit) -> tuple[int, int]:
    """(labelled rows, real-data rows) of one piece, reading only the label column."""
    try:
        table = pq.ParquetFile(unit.path).read_row_groups(list(unit.row_groups), columns=["label"])
    except Exception as err:  # noqa: BLE001
        raise StageInputError(f"{unit.path}: cannot read column 'label' ({err})") from None
    data = int((table.column("label").to_numpy() == -1).sum())
    return table.num_rows - data, data


def _fingerprint(inputs: PrepareInputs, prep: PrepareConfig, target: Target) -> str:
    files = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in inputs.sources]
    settings = prep.model_dump(mode="json")
    if prep.objects == type(prep.objects)():  # added later: at its default the fingerprint is as it was
        del settings["objects"]
    described = {"files": files, "prepare": settings, "features": inputs.features, "id": inputs.id_columns}
    if inputs.row_id_columns:
        described["row_id"] = inputs.row_id_columns
    if target.kind != "binary":  # the binary default keeps the fingerprint it always had
        described["target"] = target.stats_record()
    blob = json.dumps(described, sort_keys=True, allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _in_order(futures: list[Any], bar: Any, description: str) -> Iterator[Any]:
    """Task results one at a time in submission order, each released once handed over.

    Reducing in a fixed order keeps floating-point sums (and so the output bytes)
    independent of task timing; releasing each result keeps the client's memory flat.
    """
    task = bar.add_task(description, total=len(futures))
    for i, future in enumerate(futures):
        result = future.result()
        futures[i] = None  # the scheduler forgets a result nobody refers to
        bar.advance(task)
        yield result


def _effective_prepare(config: Config, split: Sequence[float] | None, seed: int | None,
                       allow_incomplete: bool | None = None) -> PrepareConfig:
    """``config.prepare`` with the keyword overrides, validated like a config file."""
    return with_overrides(config, {"prepare": {"split": split, "seed": seed,
                                               "allow_incomplete": allow_incomplete}},
                          source="run_prepare arguments").prepare


def run_prepare(skim_dir: str | Path, out_dir: str | Path, config: Config, *,
                split: Sequence[float] | None = None, seed: int | None = None,
                allow_incomplete: bool | None = None, scheduler: str | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Split, weight, standardise and shuffle a skim into ``out_dir``.

    Parameters
    ----------
    skim_dir : str or Path
        The skim output: exactly the parts its ``manifest.json`` lists are read
        (`analysis.prepare.outputs.skim_parts`).
    out_dir : str or Path
        Receives ``{train,val,test,data}/part-*.parquet``, ``stats.json``, ``manifest.json``.
    config : Config
        Uses ``config.features`` (None: the skim processor's default features),
        ``config.prepare`` and ``config.cluster``.
    split, seed, allow_incomplete : optional overrides of ``config.prepare``
    scheduler : str or None
        Address of an existing dask scheduler (else ``DASK_SCHEDULER_ADDRESS`` or a LocalCluster).
    progress : bool
        Progress bars and the dashboard link on stderr.

    Returns
    -------
    dict : the manifest (also written to ``out_dir/manifest.json``).
    """
    prep = _effective_prepare(config, split, seed, allow_incomplete)
    parts = skim_parts(skim_dir, allow_incomplete=prep.allow_incomplete)
    console = stage_console(quiet=not progress)
    if parts.ignored:
        console.print(f"prepare: {parts.ignored} Parquet file(s) in {skim_dir} are not parts of the skim "
                      "manifest and are not read", soft_wrap=True)
    if not parts.complete or parts.empty_datasets:
        console.print(f"prepare: --allow-incomplete: {len(parts.not_done)} input file(s) not done, "
                      f"datasets without parts: {', '.join(parts.empty_datasets) or 'none'}", soft_wrap=True)
    source = Path(skim_dir).resolve()
    # The configured features, or the ones the skim's processor declares.
    features = tuple(config.features) if config.features is not None else parts.default_features
    if not features:
        raise StageInputError(f"{skim_dir}: the skim's processor declares no default features and the "
                              "configuration names none: set `features = [...]`")
    inputs = PrepareInputs(files=parts.files, id_columns=SKIM_ID_COLUMNS, features=features,
                           source=str(source), sources=parts.files, skim=parts.record,
                           upstream=(folder_input("skim", source, skim_fingerprint(source)),),
                           row_id_columns=_object_index_columns(parts.files))
    config = config.model_copy(update={"prepare": prep})
    return prepare_inputs(inputs, out_dir, config, scheduler=scheduler, progress=progress)


def _object_index_columns(files: Sequence[Path]) -> tuple[str, ...]:
    """The object index of a skim of one row per object (`OBJECT_INDEX_COLUMNS`), from its first part."""
    if not files:
        return ()
    try:
        names = set(pq.read_schema(files[0]).names)
    except Exception:  # noqa: BLE001 - a damaged part is reported, with its name, by the first pass
        return ()
    return tuple(c for c in OBJECT_INDEX_COLUMNS if c in names)


def prepare_inputs(inputs: PrepareInputs, out_dir: str | Path, config: Config, *,
                   split: Sequence[float] | None = None, seed: int | None = None,
                   scheduler: str | None = None, progress: bool = True) -> dict[str, Any]:
    """`run_prepare` on any `PrepareInputs` (the skim, or a converted flat table)."""
    prep = _effective_prepare(config, split, seed)
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    # A killed earlier run's temporary folder goes whether or not there is work to do.
    remove_stale_temp(out_dir.parent, target=out_dir.name)
    console = stage_console(quiet=not progress)
    target = Target.from_config(config.target)
    learnt = sorted(set(target.sources) & set(inputs.features))
    if learnt:
        raise StageInputError(f"target.columns: {', '.join(learnt)} is also a training feature: a model "
                              "would read its own answer; take it out of `features`")
    lists = prep.objects.constituent_features
    both = sorted(set(lists) & set(inputs.features))
    if both:
        raise StageInputError(f"prepare.objects.constituent_features: {', '.join(both)} is also in `features`; "
                              "a list column belongs in constituent_features only")
    if target.class_column is not None and target.class_column in {*inputs.features, *lists}:
        raise StageInputError(f"target.class_column: {target.class_column!r} is also a training feature: a model "
                              "would read its own answer; take it out of `features`")
    fingerprint = _fingerprint(inputs, prep, target)
    done = out_dir / MANIFEST_FILE
    if done.is_file():
        try:
            previous = read_json(done, "the prepare manifest")
        except StageInputError:
            previous = {}
        if isinstance(previous, dict) and previous.get("fingerprint") == fingerprint:
            damage = outputs_intact(out_dir, previous)
            if damage is None:
                console.print(f"prepare: {out_dir} is up to date with {inputs.source}; nothing to do",
                              soft_wrap=True)
                return previous
            console.print(f"prepare: {out_dir} was prepared from these inputs, but {damage}: "
                          "preparing it again", soft_wrap=True)

    with atomic_dir(out_dir) as tmp:
        scratch = tmp / "_scatter"
        scratch.mkdir()
        with dask_client(config.cluster, scheduler) as client, progress_bar(quiet=not progress) as bar:
            console.print(f"prepare: dask dashboard {client.dashboard_link}", soft_wrap=True)
            manifest, stats = _two_passes(client, bar, inputs, prep, tmp, scratch, target)
        shutil.rmtree(scratch)
        manifest["fingerprint"] = fingerprint
        # Time-free, and not part of the fingerprint: an up-to-date folder is not redone
        # because the code or a library changed.
        manifest["provenance"] = build_provenance(
            "prepare", config=config.model_copy(update={"prepare": prep}).model_dump(mode="json"),
            inputs=list(inputs.upstream) or [file_input(p) for p in inputs.sources],
            seeds={"prepare.seed": prep.seed})
        write_json_atomic(tmp / STATS_FILE, stats)
        write_json_atomic(tmp / MANIFEST_FILE, manifest)
    rows = {s: manifest["splits"][s]["rows"] for s in manifest["splits"]}
    console.print(f"prepare: wrote {out_dir} ({', '.join(f'{s} {n}' for s, n in rows.items())} rows)",
                  soft_wrap=True)
    return manifest


def _bucket_counts(labelled: int, data: int, prep: PrepareConfig) -> tuple[int, int, int, int]:
    per_split = [max(1, math.ceil(labelled * f / prep.bucket_rows)) if f > 0 else 0 for f in prep.split]
    return (*per_split, math.ceil(data / prep.bucket_rows) if data else 0)  # type: ignore[return-value]


def _two_passes(client: Any, bar: Any, inputs: PrepareInputs, prep: PrepareConfig, tmp: Path,
                scratch: Path, target: Target) -> tuple[dict[str, Any], dict[str, Any]]:
    units = _input_units(inputs.files, target_rows=max(1, prep.bucket_rows // 2))
    # Task keys unique per run: a shared scheduler must never hand back another run's result.
    run = uuid.uuid4().hex[:8]
    unknown = [u for u in units if u.data_rows is None]
    futures = client.map(_count_labels, unknown, key=[f"prepare-count-{run}-{u.index}" for u in unknown])
    counts = list(_in_order(futures, bar, "prepare: count labels")) if unknown else []
    counts += [(u.rows - u.data_rows, u.data_rows) for u in units if u.data_rows is not None]
    labelled, data = sum(c[0] for c in counts), sum(c[1] for c in counts)
    if labelled == 0:
        raise StageInputError(f"{inputs.source}: no simulated (label 0/1) events to train on")
    plan = ShufflePlan(scratch_dir=str(scratch), out_dir=str(tmp), id_columns=inputs.id_columns,
                       features=inputs.features, fractions=tuple(prep.split), seed=prep.seed,
                       kfolds=prep.kfolds, negative_weights=prep.negative_weights,
                       buckets=_bucket_counts(labelled, data, prep), file_rows=prep.file_rows,
                       row_group_rows=prep.row_group_rows, target=target,
                       row_id_columns=inputs.row_id_columns,
                       constituent_features=tuple(prep.objects.constituent_features), flatten=prep.objects.flatten)
    if plan.flatten is not None:  # pass 0: the per split, class and bin totals, so pass 1 knows each factor
        futures = client.map(bin_unit, units, plan=plan, key=[f"prepare-bins-{run}-{u.index}" for u in units])
        flat = FlatBinWeights(negative_weights=prep.negative_weights, class_names=target.class_names,
                              n_bins=plan.flatten.n_bins)
        for result in _in_order(futures, bar, "prepare: flatten bins"):
            flat = flat.merge(result)
        flat.finalize()
        plan = dataclasses.replace(plan, flat=flat)

    futures = client.map(scatter_unit, units, plan=plan, key=[f"prepare-scatter-{run}-{u.index}" for u in units])
    balancer = TrainWeightBalancer(negative_weights=prep.negative_weights, class_names=target.class_names)
    class_stats = [WeightedFeatureStats(feature_names=inputs.features) for _ in target.class_names]
    target_stats = WeightedFeatureStats(feature_names=target.columns)
    skim_datasets: dict[str, list[float]] = {}
    pieces: list[list[tuple[str, int]]] = [[] for _ in range(sum(plan.buckets))]
    for result in _in_order(futures, bar, "prepare: split + statistics"):
        balancer = balancer.merge(result["balancer"])
        class_stats = [mine.merge(theirs) for mine, theirs in zip(class_stats, result["stats"])]
        if result["target_stats"] is not None:
            target_stats = target_stats.merge(result["target_stats"])
        for name, (n, w) in result["datasets"].items():
            acc = skim_datasets.setdefault(name, [0.0, 0.0])
            acc[0] += n
            acc[1] += w
        for group, (rg, _rows) in sorted(result["groups"].items()):
            pieces[group].append((result["path"], rg))
    scale = balancer.finalize()
    # Training statistics weighted by train_weight = policy weight (x flattening factor) x class scale.
    stats = class_stats[0].scaled(scale[0, 0])
    for c in range(1, target.n_classes):
        stats = stats.merge(class_stats[c].scaled(scale[0, c]))
    if target.kind == "regression":  # one class: train_weight is the policy weight x scale[0, 0]
        target_stats = target_stats.scaled(scale[0, 0])
        target = dataclasses.replace(target, mean=tuple(target_stats.mean_.tolist()),
                                     std=tuple(target_stats.scale_.tolist()))
    plan = dataclasses.replace(plan, mean=tuple(stats.mean_.tolist()), std=tuple(stats.scale_.tolist()),
                               balancer=balancer, target=target)
    constituents: ConstituentStatistics | None = None
    if plan.constituent_features:  # once the class scales are known: weighted by the final train_weight
        task = bar.add_task("prepare: constituent statistics (dask-awkward)", total=1)
        constituents = constituent_statistics([str(f) for f in inputs.files], plan, client=client, token=run)
        bar.advance(task)
        plan = dataclasses.replace(plan, constituent_mean=tuple(constituents.mean_.tolist()),
                                   constituent_std=tuple(constituents.scale_.tolist()))

    groups = [g for g in range(len(pieces)) if pieces[g]]
    futures = client.map(shuffle_bucket, groups, [pieces[g] for g in groups], plan=plan,
                         key=[f"prepare-shuffle-{run}-{g}" for g in groups])
    written = [f for files in _in_order(futures, bar, "prepare: shuffle + write") for f in files]
    manifest = prepare_manifest(inputs, prep, plan, written, skim_datasets, balancer, units)
    return manifest, stats_record(stats, balancer, prep, inputs, target, plan, constituents)
