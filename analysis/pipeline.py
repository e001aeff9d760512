"""Whole pipeline (`hepprep run`): generate -> skim -> prepare -> train -> evaluate, through files.

Each stage reads the previous stage's folder and writes its own under one output folder,
so a run can be resumed, inspected, or continued by hand with the single-stage commands:

    <out>/samples/fileset.json      generated ROOT files (skipped when --fileset is given)
    <out>/skim/                     skim Parquet, cutflow.json, manifest.json
    <out>/prepared/                 train/val/test Parquet, stats.json, manifest.json
    <out>/models/<model>/           one folder per trained model
    <out>/evaluation/report.html    metrics.json, plots/, report.html
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.config import Config
from analysis.core.progress import stage_console
from analysis.errors import StageInputError

__all__ = ["PipelineResult", "run_pipeline"]


@dataclass
class PipelineResult:
    """Where each stage wrote its output, and how long each took (seconds)."""

    out_dir: Path
    fileset: Path | None = None
    skim_dir: Path | None = None
    prep_dir: Path | None = None
    model_dirs: list[Path] = field(default_factory=list)
    report: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(set(old) | set(new), key=str)
                for d in _differences(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))]
    return [] if old == new else [f"{where} {old!r} -> {new!r}"]


def _check_reusable_sample(samples: Path, config: Config, kind: str) -> None:
    """Refuse to reuse a generated sample made with other settings than ``config``'s.

    The skim and everything after it would otherwise describe events the configuration no
    longer asks for; regenerating in place would leave skim parts of files that are gone.
    """
    from analysis.generate.kinds import kind_settings
    from analysis.generate.runner import SETTINGS_FILE, read_generation_settings

    recorded = read_generation_settings(samples)
    wanted = kind_settings(kind, config)
    if recorded == wanted:
        return
    what = (f"no {SETTINGS_FILE} records how it was generated" if recorded is None
            else "it was generated with other settings (" + "; ".join(_differences(recorded, wanted)[:3]) + ")")
    raise StageInputError(f"{samples}: cannot reuse this generated sample: {what}; run into another "
                          f"--out, or delete {samples.parent} to start again")


def run_pipeline(config: Config, out_dir: str | Path, *, fileset: str | Path | None = None,
                 models: tuple[str, ...] = ("xgboost", "mlp"), scheduler: str | None = None,
                 progress: bool = True, kind: str = "events") -> PipelineResult:
    """Run every stage on ``fileset`` (or on a freshly generated default sample).

    Parameters
    ----------
    config : Config
        The analysis configuration; every stage reads its own section.
    out_dir : str or Path
        Folder for all outputs (layout in the module docstring).
    fileset : str or Path or None
        A coffea fileset JSON of real files; None generates the synthetic sample of
        ``config.generate`` into ``<out>/samples`` (reused when already there).
    models : tuple of str
        Models to train and compare: "xgboost", "mlp", and on jets the taggers "pfn", "part", "cnn".
    scheduler : str or None
        Address of an existing dask scheduler for the dask stages.
    progress : bool
        Progress bars on stderr.
    kind : str
        The sample generated when no fileset is given: "events" (the di-tau NanoAOD) or
        "jets" (PFNano jets, for a jet processor's configuration such as examples/jets.toml).
    """
    from analysis.evaluate.runner import run_evaluate
    from analysis.generate.kinds import generate_kind
    from analysis.prepare.runner import run_prepare
    from analysis.skim.runner import run_skim
    from analysis.train.runner import run_train

    console = stage_console(quiet=not progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = PipelineResult(out_dir=out)

    def timed(name: str, fn, *args, **kwargs):
        console.rule(f"[bold]{name}")
        start = time.perf_counter()
        value = fn(*args, **kwargs)
        result.seconds[name] = time.perf_counter() - start
        console.print(f"{name}: {result.seconds[name]:.1f} s")
        return value

    if fileset is None:
        fileset = out / "samples" / "fileset.json"
        if fileset.is_file():
            _check_reusable_sample(out / "samples", config, kind)
            console.print(f"generate: reusing {fileset}")
        else:
            fileset = timed("generate", generate_kind, kind, out / "samples", config, progress=progress)
    result.fileset = Path(fileset)

    result.skim_dir = out / "skim"
    timed("skim", run_skim, result.fileset, result.skim_dir, config, scheduler=scheduler,
          progress=progress)
    result.prep_dir = out / "prepared"
    timed("prepare", run_prepare, result.skim_dir, result.prep_dir, config, scheduler=scheduler,
          progress=progress)
    for model in models:
        model_dir = out / "models" / model
        timed(f"train {model}", run_train, result.prep_dir, model_dir, config, model=model,
              scheduler=scheduler, progress=progress)
        result.model_dirs.append(model_dir)
    result.report = timed("evaluate", run_evaluate, result.model_dirs, result.prep_dir,
                          out / "evaluation", config, progress=progress)
    return result
