"""Skim stage: `run_skim`, the coffea Runner over a fileset writing skim Parquet, cutflow and manifest.

Steps: read the fileset; check every file (`analysis.skim.checks`: in the worker processes
when they are to run the chunks); compute missing ``sumw``; cut the files into chunks with
coffea's `Runner.preprocess` (fed from the checks, so no file is opened twice); drop the
chunks whose part already exists (resume); run the configured processor
(`analysis.skim.plugins`; the di-tau one by default) on the rest with the iterative,
futures, dask or dask-awkward executor (``auto``: iterative or futures by the size of the
rest, `analysis.skim.pool`); write ``cutflow.json`` and ``manifest.json``. Each chunk writes
its own part, so a killed run loses at most the chunks in flight.
"""

from __future__ import annotations

import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from coffea import processor
from coffea.nanoevents import NanoAODSchema
from coffea.processor.executor import FileMeta

from analysis.config import Config, with_overrides
from analysis.core.cluster import dask_client
from analysis.core.io import write_json_atomic
from analysis.core.net import is_remote
from analysis.core.progress import stage_console
from analysis.core.provenance import build_provenance
from analysis.errors import ConfigError, InputFileError
from analysis.skim.checks import check_inputs, checks_in_workers
from analysis.skim.coffea_compat import chunk_tree, progress_bars
from analysis.skim.inputs import load_fileset, resolve_datasets
from analysis.skim.manifest import (build_cutflow, build_manifest, chunk_relpath, job_cutflow_path,
                                    job_manifest_path, keep_provenance, plan_chunks, remove_stale_temp_files,
                                    skim_inputs)
from analysis.skim.open_files import LOCAL_READ_OPTIONS, OpenFiles, WorkerObjectCache
from analysis.skim.plugins import load_processor
from analysis.skim.pool import (choose_executor, order_for_workers, start_worker_server, starts_workers,
                                worker_pool)
from analysis.skim.remote import RetryingRunner
from processors.parts import BackgroundParts

__all__ = ["EXECUTORS", "run_skim"]

EXECUTORS = ("auto", "iterative", "futures", "dask", "dask-awkward")


def _where(executor: str, workers: int, chunks: int) -> str:
    """Where the chunks ran, for the summary line."""
    if not chunks:
        return ""
    if executor == "futures":
        return f" in {workers} worker processes"
    return " on the dask cluster" if executor in ("dask", "dask-awkward") else " in this process"


def _executor(kind: str, *, workers: int, progress: bool, client=None,
              pool=None) -> processor.executor.ExecutorBase:
    if kind == "iterative":
        return processor.IterativeExecutor(status=progress, desc="skim")
    if kind == "futures":
        return processor.FuturesExecutor(pool=pool, workers=workers, status=progress, desc="skim")
    return processor.DaskExecutor(client=client, status=progress, desc="skim")


def run_skim(fileset: str | Path, out_dir: str | Path, config: Config, *,
             executor: str | None = None, workers: int | None = None, scheduler: str | None = None,
             chunksize: int | None = None, skip_bad_files: bool | None = None,
             progress: bool = True, job_id: int | None = None) -> dict[str, Any]:
    """Skim every file of a fileset into ``out_dir`` (resuming a previous run there).

    Parameters
    ----------
    fileset : str or Path
        coffea fileset JSON (DESIGN.md "Fileset"); relative paths are taken from its folder.
    out_dir : str or Path
        The skim folder: ``<dataset>/part-*.parquet``, ``cutflow.json``, ``manifest.json``.
    config : Config
        ``selection``, ``lumi_pb``, ``samples`` (fallback metadata), ``skim``, ``cluster``.
    executor : {"auto", "iterative", "futures", "dask", "dask-awkward"} or None
        None takes ``config.skim.executor``; ``"auto"`` runs the chunks in this process or in
        ``workers`` processes by the size of the work (`analysis.skim.pool.choose_executor`).
    workers : int or None
        Processes of the futures executor, or of a LocalCluster started for dask.
    scheduler : str or None
        Address of an existing dask scheduler; implies the dask executor (see `analysis.core.cluster`).
    chunksize, skip_bad_files : None takes the value of ``config.skim``.
    progress : bool
        coffea's progress bar.
    job_id : int or None
        Batch job ``k`` of `hepprep submit`: ``fileset`` is one slice of the full fileset and
        ``out_dir`` is shared with the other jobs, so the manifest and cutflow go to
        ``manifests/job-<k>.json`` and ``manifests/job-<k>.cutflow.json``, and other jobs'
        parts and temporary files are left alone.

    Returns
    -------
    dict
        ``chunks`` (planned), ``chunks_run`` (this call), ``chunks_skipped`` (already done),
        ``rows``, ``events``, ``bad_files``, ``seconds``, ``out_dir``, ``executor`` (the one
        that ran the chunks) and ``executor_reason`` (why, for ``"auto"``).

    Raises
    ------
    InputFileError
        A bad input file, unless ``skip_bad_files``.
    StageInputError
        An unreadable fileset, or ``out_dir`` holding parts of other settings.
    """
    start_time = time.perf_counter()
    if scheduler and executor not in (None, "dask", "dask-awkward"):
        raise ConfigError(f"scheduler {scheduler!r} is a dask scheduler: use executor 'dask', "
                          f"not {executor!r}")
    # An explicit scheduler address means dask, whatever the config's default executor (but dask-awkward).
    keep = config.skim.executor == "dask-awkward"
    config = with_overrides(config, {"skim": {
        "executor": executor or ("dask" if scheduler and not keep else None), "workers": workers,
        "chunksize": chunksize, "skip_bad_files": skip_bad_files}}, source="run_skim arguments")
    executor, workers = config.skim.executor, config.skim.workers
    chunksize, skip = config.skim.chunksize, config.skim.skip_bad_files
    out = Path(out_dir)

    proc = load_processor(config, out_dir=str(out), chunk_tree=chunk_tree)
    datasets = resolve_datasets(load_fileset(fileset), config)
    if starts_workers(executor, workers):
        # Worker processes run the chunks: their libraries import meanwhile (analysis.skim.pool).
        start_worker_server(config.skim.processor)
    # NanoEvents sees only the branches the processor reads: building the events of a
    # chunk from a 1,500-branch NanoAOD file would otherwise cost more than reading it.
    wanted = proc.input_branches()
    if wanted is not None:  # and the datasets' weight branches (read_bookkeeping)
        wanted = sorted({*wanted, *(b for d in datasets.values() if d.weight for b in d.weight)})
    # Chunks run in this process keep the checked files open: coffea reuses their TTrees
    # instead of reading them again (analysis.skim.open_files).
    open_files = OpenFiles() if executor in ("auto", "iterative") else None

    with ExitStack() as stack:
        if open_files is not None:
            stack.callback(open_files.close)
        # Workers that will run the chunks check the files too, and keep them open for their
        # chunks (analysis.skim.checks).
        pool = None
        if starts_workers(executor, workers) and checks_in_workers(datasets):
            pool = stack.enter_context(worker_pool(workers, config.skim.processor))
        errors = check_inputs(datasets, config, proc, skip_bad_files=skip, open_files=open_files, pool=pool,
                              filter_name=wanted)
        if executor == "dask-awkward":
            # imported here: coffea.dataset_tools and dask-awkward cost every other skim's start-up
            from analysis.skim.dask_awkward import refuse_rntuple, skim_dask_awkward

            refuse_rntuple(datasets)
        out.mkdir(parents=True, exist_ok=True)
        known = {f.uuid for d in datasets.values() for f in d.files if f.uuid}  # this run's input files
        remove_stale_temp_files(out, uuids=known if job_id is not None else None)

        # coffea chunking, fed with the checks' metadata so the Runner opens no file itself.
        cache, coffea_fileset = {}, {}
        for info in datasets.values():
            good = [f for f in info.files if f.error is None]
            if good:
                coffea_fileset[info.name] = {"files": {f.path: f.treename for f in good},
                                             "metadata": info.metadata()}
            for f in good:
                cache[FileMeta(info.name, f.path, f.treename)] = {
                    **info.metadata(), "numentries": f.entries, "uuid": f.uuid_bytes}
        fingerprints = {n: proc.fingerprint(d.metadata()) for n, d in datasets.items()}

        stack.enter_context(progress_bars(progress))
        # Chunking reads no file (the metadata is cached): the executor is chosen afterwards,
        # from the chunks left to run.
        client = None
        runner = RetryingRunner(executor=_executor("iterative", workers=workers, progress=progress),
                                chunksize=chunksize, metadata_cache=cache, schema=NanoAODSchema,
                                xrootdtimeout=config.skim.timeout, remote_retries=config.skim.retries,
                                retry_wait=config.skim.retry_wait)
        items = list(runner.preprocess(coffea_fileset)) if coffea_fileset else []
        plan: dict[str, list[str]] = {}
        planned: dict[str, str] = {}
        for wi in items:
            rel = chunk_relpath(wi.dataset, str(uuid.UUID(bytes=wi.fileuuid)), wi.entrystart, wi.entrystop)
            plan.setdefault(wi.filename, []).append(rel)
            planned[rel] = fingerprints[wi.dataset]
        done, stale = plan_chunks(out, planned, known, datasets, other_jobs=job_id is not None)
        if stale:
            # Parts of other settings (a new processor version, other cuts) are skimmed again
            # and replaced; until this run ends no record may vouch for the folder's parts.
            for record in (out / "manifest.json", out / "cutflow.json") if job_id is None else (
                    job_manifest_path(out, job_id), job_cutflow_path(out, job_id)):
                record.unlink(missing_ok=True)
            stage_console(quiet=not progress).print(
                f"skim: {len(stale)} part(s) were written with other settings (processor, cuts, "
                "luminosity or dataset metadata): skimming their chunks again", soft_wrap=True)
        todo = [wi for wi in items
                if chunk_relpath(wi.dataset, str(uuid.UUID(bytes=wi.fileuuid)), wi.entrystart,
                                 wi.entrystop) not in done]
        executor, reason = choose_executor(executor, workers=workers, chunks=len(todo),
                                           events=sum(wi.entrystop - wi.entrystart for wi in todo),
                                           parallel_min_events=config.skim.parallel_min_events)
        if executor != "iterative" and open_files is not None:
            open_files.close()  # the chunks run elsewhere: nothing here reads the kept files
            open_files = None
        if executor == "iterative" and todo:
            # This process writes each part while it runs the next chunk (BackgroundParts).
            proc.part_writer = writer = BackgroundParts()
            stack.callback(writer.close)
        if executor in ("dask", "dask-awkward") and todo:
            client = stack.enter_context(dask_client(config.cluster, scheduler, n_workers=workers))
            if executor == "dask":  # (dask-awkward computes its graph on the client itself)
                runner.executor = _executor(executor, workers=workers, progress=progress, client=client)
        elif executor == "futures" and todo:
            if pool is None:
                pool = stack.enter_context(worker_pool(workers, config.skim.processor))
            runner.executor = _executor(executor, workers=workers, progress=progress, pool=pool)
            todo = order_for_workers(todo)
        iteritems = {"filter_name": wanted} if wanted is not None else {}
        # Memory-mapped reads when every file is local; kept files' TTrees reused.
        local = not any(is_remote(wi.filename) for wi in todo)
        uproot_options = dict(LOCAL_READ_OPTIONS) if local else {}
        if open_files is not None:
            uproot_options.update(open_files.chunk_options(wanted))
        elif executor == "futures" and local:
            # Each worker keeps the files of its chunks open for its next ones (WorkerFiles).
            uproot_options["object_cache"] = WorkerObjectCache()
            runner.keep_files = (wanted,)
            runner.install_retry()
        if executor == "dask-awkward":  # coffea's dask mode on the same chunks (analysis.skim.dask_awkward)
            result = skim_dask_awkward(todo, proc, datasets, uproot_options=uproot_options,
                                       client=client) if todo else {}
        else:
            result = (runner(todo, proc, iteritems_options=iteritems, uproot_options=uproot_options)
                      if todo else {})

    summaries = {**done, **result.get("chunks", {})}
    by_path = {f.path: (d, f) for d in datasets.values() for f in d.files}
    # Several chunks of one file may fail; the first (sorted) cause stands for the file.
    run_errors = sorted((path, sorted(causes)[0]) for path, causes in result.get("errors", {}).items())
    for path, cause in run_errors:
        info, item = by_path[path]
        item.error = cause
        errors.append({"dataset": info.name, "path": path, "cause": cause})

    provenance = build_provenance("skim", config=config.model_dump(mode="json"),
                                  inputs=skim_inputs(fileset, datasets), seeds={})
    manifest = build_manifest(out_dir=out, fileset=str(fileset), chunksize=chunksize, datasets=datasets,
                              processor=proc.record(),
                              plan=plan, summaries=summaries, errors=errors, skip_bad_files=skip,
                              provenance=provenance)
    manifest_path, cutflow_path = out / "manifest.json", out / "cutflow.json"
    if job_id is not None:
        manifest_path, cutflow_path = job_manifest_path(out, job_id), job_cutflow_path(out, job_id)
        manifest_path.parent.mkdir(exist_ok=True)
    if not todo:  # nothing skimmed now: the parts, and so their record, are the earlier run's
        manifest = keep_provenance(manifest_path, manifest)
    write_json_atomic(cutflow_path, build_cutflow(summaries, datasets))
    write_json_atomic(manifest_path, manifest)
    if run_errors and not skip:
        raise InputFileError(*run_errors[0])

    summary = {
        "out_dir": str(out), "executor": executor, "executor_reason": reason, "chunks": len(items),
        "chunks_run": len(todo), "chunks_skipped": len(done),
        "events": sum(s["stop"] - s["start"] for s in summaries.values()),
        "rows": sum(s["rows"] for s in summaries.values()),
        # Events that passed every step (a processor may write several rows per event: jets).
        "selected_events": sum(int(s["cutflow"][list(s.get("steps", s["cutflow"]))[-1]]["events"])
                               for s in summaries.values() if s.get("cutflow")),
        "bad_files": len(errors), "complete": manifest["complete"],
        "seconds": round(time.perf_counter() - start_time, 3),
    }
    # The one-line summary stays with --quiet (which silences progress bars only).
    stage_console().print(
        f"skim: {summary['selected_events']:,} events selected of {summary['events']:,}"
        + (f" ({summary['rows']:,} rows)" if summary["rows"] != summary["selected_events"] else "") + "; "
        f"{summary['chunks_run']} chunks run{_where(executor, workers, len(todo))}, "
        f"{summary['chunks_skipped']} already done"
        + (f"; {len(errors)} bad file(s) skipped, see {manifest_path.name}" if errors else "")
        + f" -> {out}", soft_wrap=True)
    return summary
