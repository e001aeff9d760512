"""Pipeline level (`hepprep provenance DIR`): the chain of stages behind an output folder.

Given an evaluation folder, a model folder, a prepared folder, a skim folder, a fileset (or
the folder holding ``fileset.json``) or the output folder of ``hepprep run`` (``samples/``
``skim/`` ``prepared/`` ``models/`` ``evaluation/``), `trace` follows the paths each stage
recorded in its provenance (`analysis.core.provenance`): evaluation -> models -> prepared ->
skim -> fileset. `format_trace` prints one block per stage: its path, the hepprep version
and commit, the configuration hash, its fingerprint, its seeds, and for every input it
recorded whether that input still matches what is on disk now ("matches" / "CHANGED
since: ...").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from analysis.core.provenance import GENERATE_SETTINGS_FILE, RECORD_FILES, short, stage_view
from analysis.errors import StageInputError

__all__ = ["format_trace", "provenance_report", "trace"]

CHAIN = ("evaluation", "model", "prepared", "skim", "fileset")  # downstream first
FILESET_FILE = "fileset.json"


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _is_fileset(path: Path) -> bool:
    data = _json(path)
    return isinstance(data, dict) and bool(data) and all(
        isinstance(v, dict) and "files" in v for v in data.values())


def _what_is(path: Path) -> tuple[str, Path] | None:
    """(kind, path) of one stage's output, or None."""
    if path.is_file():
        if path.name in set(RECORD_FILES.values()):
            return _what_is(path.parent)
        return ("fileset", path) if _is_fileset(path) else None
    if not path.is_dir():
        return None
    if (path / RECORD_FILES["evaluation"]).is_file():
        return "evaluation", path
    if (path / RECORD_FILES["model"]).is_file():
        return "model", path
    manifest = _json(path / "manifest.json")
    stage = manifest.get("stage") if isinstance(manifest, dict) else None
    if stage in ("prepare", "skim"):
        return ("prepared" if stage == "prepare" else "skim"), path
    if (path / FILESET_FILE).is_file() and _is_fileset(path / FILESET_FILE):
        return "fileset", path / FILESET_FILE
    return None


def _starts(folder: Path) -> list[tuple[str, Path]]:
    found = _what_is(folder)
    if found is not None:
        return [found]
    # `hepprep run --out`: every stage's folder there (models not evaluated included)
    candidates = [folder / "evaluation"]
    if (folder / "models").is_dir():
        candidates += sorted(p for p in (folder / "models").iterdir() if p.is_dir())
    candidates += [folder / "prepared", folder / "skim", folder / "samples"]
    starts = [s for s in map(_what_is, candidates) if s is not None]
    if not starts:
        raise StageInputError(f"{folder}: {_why_not(folder)}")
    return starts


def _why_not(folder: Path) -> str:
    if not folder.exists():
        return "no such file or folder"
    if folder.is_dir() and any((folder / "manifests").glob("job-*.json")):
        return (f"a batch skim whose job manifests are not merged yet; run `hepprep skim --merge-manifests "
                f"{folder}` once every job is done")
    if folder.is_dir() and any((folder / name).is_file() for name in ("model.json", "checkpoint.pt")):
        return f"a model folder without {RECORD_FILES['model']}: its training did not finish"
    return ("not a hepprep output: no metrics.json (evaluation), model_info.json (model), manifest.json "
            "of a skim or a preparation, fileset.json, nor the samples/ skim/ prepared/ models/ "
            "evaluation/ of `hepprep run`")


def _fileset_view(path: Path) -> dict[str, Any]:
    settings = _json(path.parent / GENERATE_SETTINGS_FILE)
    generate = settings.get("generate") if isinstance(settings, dict) else None
    return {"kind": "fileset", "path": str(path), "record": None, "provenance": None, "fingerprint": None,
            "fingerprint_now": None, "inputs": [],
            "generate": generate if isinstance(generate, dict) else None}


def _upstream(view: dict[str, Any]) -> list[tuple[str, Path]]:
    """The upstream outputs a stage recorded: its provenance inputs, else (older outputs) the
    paths its record names."""
    provenance, record = view["provenance"], view["record"] or {}
    if provenance:
        return [(e["kind"], Path(e["path"])) for e in provenance.get("inputs") or []
                if isinstance(e, dict) and e.get("kind") in CHAIN and isinstance(e.get("path"), str)]
    named: list[tuple[str, Any]] = {
        "evaluation": [("prepared", record.get("prep_dir"))]
                      + [("model", m.get("model_dir")) for m in (record.get("models") or {}).values()
                         if isinstance(m, dict)],
        "model": [("prepared", record.get("prepared_dir"))],
        "prepared": [("skim", record.get("source"))] if record.get("skim") is not None else [],
        "skim": [("fileset", record.get("fileset"))],
    }.get(view["kind"], [])
    return [(kind, Path(p)) for kind, p in named if isinstance(p, str) and p]


def trace(folder: str | Path) -> list[dict[str, Any]]:
    """Every stage behind ``folder``, downstream first (`analysis.core.provenance.stage_view`).

    Raises
    ------
    StageInputError
        ``folder`` is none of the outputs the module docstring lists.
    """
    queue = _starts(Path(folder))
    seen: set[tuple[str, Path]] = set()
    views: list[dict[str, Any]] = []
    while queue:
        kind, path = queue.pop(0)
        key = (kind, path.resolve())
        if key in seen or not (path.is_file() if kind == "fileset" else path.is_dir()):
            continue  # an input that is gone shows as CHANGED in its consumer's block
        seen.add(key)
        view = _fileset_view(path) if kind == "fileset" else stage_view(kind, path)
        views.append(view)
        queue += _upstream(view)
    return sorted(views, key=lambda v: CHAIN.index(v["kind"]))  # stable: discovery order within a kind


def _block(view: dict[str, Any]) -> list[str]:
    kind, record = view["kind"], view["provenance"]
    if kind == "fileset":
        generate = view["generate"]
        if generate is None:
            return [f"[fileset] {view['path']}", "    not generated by hepprep (no generate.json beside it)"]
        settings = ", ".join(f"{k}={generate.get(k)}" for k in ("seed", "events", "files_per_sample"))
        return [f"[generate] {view['path']}",
                f"    generated by `hepprep generate` ({GENERATE_SETTINGS_FILE}): {settings}"]
    name = f"model {Path(view['path']).name}" if kind == "model" else kind
    lines = [f"[{name}] {view['path']}"]
    if record is None:
        lines.append("    provenance: not recorded (written by an older hepprep, or by hand)")
    else:
        commit = record.get("git_commit") or "none (not a git checkout)"
        seeds = ", ".join(f"{k}={v}" for k, v in (record.get("seeds") or {}).items()) or "none"
        lines += [f"    hepprep {record.get('hepprep_version')}, commit {commit}",
                  f"    config hash {short(record.get('config_hash'))}", f"    seeds: {seeds}"]
    fp, now = view["fingerprint"], view["fingerprint_now"]
    if kind == "skim" and fp is None:
        lines.append(f"    fingerprint not recorded (its parts on disk now: {short(now)})")
    elif kind == "skim":
        lines.append(f"    fingerprint {short(fp)} (its parts on disk"
                     + (": matches)" if fp == now else f" now {short(now)}: CHANGED)"))
    elif fp:
        lines.append(f"    fingerprint {short(fp)}")
    for row in view["inputs"]:
        lines.append(f"    input {row['kind']} {row['path']} ({row['recorded']}): {row['status']}")
    if record is None:
        lines += [f"    reads {k} {p} (recorded path, nothing to compare)" for k, p in _upstream(view)]
    return lines


def format_trace(views: list[dict[str, Any]]) -> str:
    """The text of `hepprep provenance`: one block per stage, a blank line between blocks."""
    return "\n\n".join("\n".join(_block(v)) for v in views)


def provenance_report(folder: str | Path) -> str:
    """`format_trace` of `trace` of ``folder``."""
    return format_trace(trace(folder))
