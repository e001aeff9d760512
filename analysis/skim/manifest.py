"""Skim stage: resume planning and the run's bookkeeping files (`cutflow.json`, `manifest.json`).

Resume works from what is on disk: a chunk whose part exists (with the settings
fingerprint of this run) is done. Parts that do not fit this run's plan, from another
chunk size, other settings or a file no longer in the fileset, are an error rather than a
silent double count. `cutflow.json` is summed from the summaries stored in the parts, so
it is the same whether the chunks ran now, earlier, or on several attempts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from analysis.core.names import dataset_folder
from analysis.core.net import redact
from analysis.core.provenance import file_input
from analysis.core.skimmed import parts_fingerprint
from analysis.errors import StageInputError
from analysis.skim.inputs import DatasetInfo
from processors.parts import part_name, read_part_summary

__all__ = ["JOB_MANIFEST_DIR", "build_cutflow", "build_manifest", "chunk_relpath", "job_cutflow_path",
           "job_manifest_path", "keep_provenance", "plan_chunks", "remove_stale_temp_files", "skim_inputs"]

# A batch job (`hepprep submit`) skims one slice of the fileset into the shared skim folder
# and keeps its bookkeeping here, one manifest per job, until `--merge-manifests`.
JOB_MANIFEST_DIR = "manifests"


def chunk_relpath(dataset: str, fileuuid: str, start: int, stop: int) -> str:
    """``<dataset folder>/part-<fileuuid>-<start>-<stop>.parquet``, relative to the skim folder.

    The folder is `analysis.core.names.dataset_folder` of the dataset name (the name itself
    for a plain one).
    """
    return f"{dataset_folder(dataset)}/{part_name(fileuuid, start, stop)}"


def job_manifest_path(out_dir: Path, job_id: int) -> Path:
    """``<out>/manifests/job-<k>.json``: the manifest of batch job ``k``."""
    return Path(out_dir) / JOB_MANIFEST_DIR / f"job-{job_id}.json"


def job_cutflow_path(out_dir: Path, job_id: int) -> Path:
    """``<out>/manifests/job-<k>.cutflow.json``: the cutflow of batch job ``k``'s slice."""
    return Path(out_dir) / JOB_MANIFEST_DIR / f"job-{job_id}.cutflow.json"


def remove_stale_temp_files(out_dir: Path, *, uuids: set[str] | None = None) -> int:
    """Delete temporary part files a killed run left behind (hidden ``.part-*.tmp-*``).

    ``uuids`` limits it to the temporary files of those input files: a batch job shares the
    folder with jobs still writing theirs.
    """
    removed = 0
    for tmp in out_dir.glob("*/.part-*.tmp-*"):
        if uuids is not None and tmp.name.removeprefix(".part-")[:36] not in uuids:
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def plan_chunks(out_dir: Path, planned: dict[str, str], known_uuids: set[str],
                datasets: Iterable[str], *, other_jobs: bool = False
                ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Which planned chunks are already done, checking the folder holds nothing else.

    Parameters
    ----------
    out_dir : Path
        The skim folder.
    planned : dict of relpath -> fingerprint
        Every chunk of this run and the settings fingerprint its part must carry.
    known_uuids : set of str
        uuids of the input files of this run (files that failed the checks included).
    datasets : iterable of str
    other_jobs : bool
        The folder is shared with other batch jobs: parts of files outside ``known_uuids``
        are theirs and left alone (`--merge-manifests` checks them against every job).

    Returns
    -------
    (done, stale)
        ``done``: relpath -> stored summary, for the chunks already done with these
        settings; ``stale``: the relpaths of parts of this plan written with other settings
        (another processor version, other cuts, luminosity, cross section or sumw), whose
        chunks run again and replace them.

    Raises
    ------
    StageInputError
        A part from another chunk size or of a file not in the fileset; the message names
        the part and the fix.
    """
    done, stale = {}, []
    for dataset in datasets:
        folder = dataset_folder(dataset)
        for part in sorted((out_dir / folder).glob("part-*.parquet")):
            rel = f"{folder}/{part.name}"
            if rel in planned:
                summary = read_part_summary(part)
                if summary is None:
                    raise StageInputError(f"{part}: not a skim part written by hepprep (no chunk "
                                          f"summary in its metadata); delete it and re-run")
                if summary.get("fingerprint") != planned[rel]:
                    stale.append(rel)
                else:
                    done[rel] = summary
                continue
            fileuuid = part.name.removeprefix("part-").rsplit("-", 2)[0]
            if other_jobs and fileuuid not in known_uuids:
                continue
            why = ("another --chunksize" if fileuuid in known_uuids
                   else "an input file that is not in this fileset")
            raise StageInputError(f"{part}: a part from {why}, so this run's chunks would count "
                                  f"its events twice; re-run with the earlier settings, or skim "
                                  f"into a fresh --out")
    return done, stale


def build_cutflow(summaries: dict[str, dict[str, Any]],
                  datasets: dict[str, DatasetInfo]) -> dict[str, Any]:
    """Events and sum of weights after each cut, per dataset, summed over the parts.

    The sums run over the parts sorted by name (`math.fsum`), so the result does not
    depend on which executor or which run produced each part.
    """
    out: dict[str, Any] = {}
    for name, info in datasets.items():
        parts = [summaries[k] for k in sorted(summaries) if summaries[k]["dataset"] == name]
        # The processor's steps in the order it records them (every part records the same ones).
        cuts = list(dict.fromkeys(c for p in parts for c in p.get("steps", p["cutflow"])))
        out[name] = {
            "process": info.process, "label": info.label,
            "cuts": {c: {"events": sum(p["cutflow"][c]["events"] for p in parts),
                         "sum_weight": math.fsum(p["cutflow"][c]["sum_weight"] for p in parts)}
                     for c in cuts},
        }
    return out


def skim_inputs(fileset: str | Path, datasets: dict[str, DatasetInfo]) -> list[dict[str, Any]]:
    """The provenance inputs of a skim: the fileset, then every input file (uuid, size, mtime)."""
    return [file_input(fileset, kind="fileset")] + [
        file_input(item.path, uuid=item.uuid or None) for info in datasets.values() for item in info.files]


def keep_provenance(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest``, with the provenance of the manifest already at ``path`` when that records this
    very skim: the same content, configuration hash and inputs.

    For a re-run that ran no chunk (or a merge done again): the parts are the earlier run's,
    so its record (command, version, commit) stays, and the file is rewritten byte for byte.
    """
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return manifest
    old = previous.get("provenance") if isinstance(previous, dict) else None
    new = manifest["provenance"]
    if not isinstance(old, dict) or (old.get("config_hash"), old.get("inputs")) != (
            new["config_hash"], new["inputs"]):
        return manifest
    rest = {k: v for k, v in manifest.items() if k != "provenance"}
    return {**manifest, "provenance": old} if {k: v for k, v in previous.items()
                                               if k != "provenance"} == rest else manifest


def build_manifest(*, out_dir: Path, fileset: str, chunksize: int, datasets: dict[str, DatasetInfo],
                   plan: dict[str, list[str]], summaries: dict[str, dict[str, Any]],
                   errors: list[dict[str, str]], skip_bad_files: bool,
                   provenance: dict[str, Any], processor: dict[str, Any] | None = None) -> dict[str, Any]:
    """`manifest.json`: every input file with its uuid, entry ranges done, parts, errors.

    Parameters
    ----------
    out_dir : Path
        The skim folder: the parts there give the skim's ``fingerprint``
        (`analysis.core.skimmed.parts_fingerprint`).
    plan : dict of input path -> list of chunk relpaths planned for that file
    summaries : dict of relpath -> chunk summary, for every chunk done (now or earlier)
    errors : list of {"dataset", "path", "cause"}
    skip_bad_files : bool
        Whether a file with an error counts as skipped (the run goes on) or failed.
    provenance : dict
        `analysis.core.provenance.build_provenance` of the run.

    A processor's counts (`processors.base.Cutflow.count`: objects it handled in a documented
    way, such as jets without constituents) are kept per chunk and summed per dataset.
    A file's ``status`` is ``done``, ``skipped`` (bad, and --skip-bad-files), ``failed``
    (bad) or ``incomplete`` (some chunks not done yet: resume with the same command);
    ``complete`` is true when every file is done or skipped.
    """
    failed = {e["path"]: e["cause"] for e in errors}
    # Paths and causes are records: a URL's credentials are never written (core.net.redact).
    files = []
    for info in datasets.values():
        for item in info.files:
            planned = plan.get(item.path, [])
            # a processor's counts of objects handled in a documented way (`Cutflow.count`), when it keeps any
            chunks = [dict(start=summaries[r]["start"], stop=summaries[r]["stop"], part=r,
                           rows=summaries[r]["rows"],
                           **({"counts": summaries[r]["counts"]} if summaries[r].get("counts") else {}))
                      for r in planned if r in summaries]
            if item.path in failed:
                status = "skipped" if skip_bad_files else "failed"
            else:
                status = "done" if planned and len(chunks) == len(planned) else "incomplete"
            error = failed.get(item.path)
            files.append({"dataset": info.name, "path": redact(item.path), "uuid": item.uuid or None,
                          "entries": item.entries, "profile": item.profile or None,
                          "status": status, "chunks": chunks,
                          "error": None if error is None else redact(error)})
    counts: dict[str, dict[str, int]] = {}
    for summary in summaries.values():
        for name, n in (summary.get("counts") or {}).items():
            totals = counts.setdefault(summary["dataset"], {})
            totals[name] = totals.get(name, 0) + int(n)
    return {
        "stage": "skim",
        "fileset": fileset,
        "chunksize": chunksize,
        "complete": all(f["status"] in ("done", "skipped") for f in files),
        "fingerprint": parts_fingerprint(out_dir, files),
        # which analysis wrote the parts (name, version, options, its default features)
        **({"processor": processor} if processor is not None else {}),
        "datasets": {n: {**d.record(), **({"folder": d.folder} if d.folder != n else {}),
                         **({"counts": counts[n]} if counts.get(n) else {})}
                     for n, d in datasets.items()},
        "files": files,
        "errors": [{**e, "path": redact(e["path"]), "cause": redact(e["cause"])} for e in errors],
        "provenance": provenance,
    }

