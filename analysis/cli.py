"""Command line (all stages): the `hepprep` console script, a thin layer over the stage functions.

Each command loads the configuration (``--config FILE``, then flags), calls one stage
function, and turns any `HepprepError` into one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import atexit
import errno
import gc
import sys
from pathlib import Path
from typing import Any, Optional

import typer

try:  # typer >= 0.20 vendors its own click
    from typer._click import exceptions as _click_exc
except ImportError:  # pragma: no cover - older typer
    from click import exceptions as _click_exc

from analysis.config import Config, config_to_toml, load_config
from analysis.core.net import redact
from analysis.errors import ConfigError, HepprepError

app = typer.Typer(name="hepprep", add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="From NanoAOD ROOT files to a trained, evaluated H->tautau classifier.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
app.add_typer(config_app, name="config")

ConfigOption = typer.Option(None, "--config", "-c", help="TOML configuration file (default: the embedded default).")
QuietOption = typer.Option(False, "--quiet", "-q", help="No progress bars.")


def _overrides(**sections: dict[str, Any]) -> dict[str, Any]:
    """Nested overrides from flags, leaving out flags the user did not give (None)."""
    out: dict[str, Any] = {}
    for section, values in sections.items():
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            out[section] = given
    return out


def _load(config: Optional[Path], **sections: dict[str, Any]) -> Config:
    return load_config(config, _overrides(**sections))


@config_app.command("show")
def config_show(config: Optional[Path] = ConfigOption) -> None:
    """Print the effective configuration (defaults, then the file) as TOML."""
    typer.echo(config_to_toml(load_config(config)), nl=False)


@app.command()
def generate(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for the ROOT files and fileset.json."),
    events: Optional[int] = typer.Option(None, help="Total simulated events over all MC datasets."),
    files_per_sample: Optional[int] = typer.Option(None, help="ROOT files per dataset."),
    seed: Optional[int] = typer.Option(None, help="Random seed (same seed, same files)."),
    compression: Optional[str] = typer.Option(None, help="ALG:LEVEL, ALG one of ZLIB, LZ4, ZSTD, LZMA."),
    kind: str = typer.Option("events", help="events (the di-tau NanoAOD) or jets (PFNano, README Generated jets)."),
    config: Optional[Path] = ConfigOption,
    quiet: bool = QuietOption,
) -> None:
    """Write synthetic samples (CMS 2012 outreach NanoAOD, or PFNano jets with --kind jets) and fileset.json."""
    cfg = _load(config, generate=dict(events=events, files_per_sample=files_per_sample,
                                      seed=seed, compression=compression))
    from analysis.generate.kinds import generate_kind

    fileset = generate_kind(kind, out, cfg, progress=not quiet)
    typer.echo(f"fileset: {fileset}", err=True)


@app.command()
def skim(
    fileset: Optional[Path] = typer.Argument(None, help="coffea fileset JSON (from `hepprep generate`)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Skim folder: <dataset>/part-*.parquet, cutflow.json, manifest.json."),
    executor: Optional[str] = typer.Option(None, help="auto (by the size of the work), iterative, futures, dask or dask-awkward."),
    workers: Optional[int] = typer.Option(None, help="Processes (futures) or LocalCluster workers (dask)."),
    scheduler: Optional[str] = typer.Option(None, help="Existing dask scheduler address (dask executor)."),
    chunksize: Optional[int] = typer.Option(None, help="Events per chunk; one Parquet part per chunk."),
    skip_bad_files: Optional[bool] = typer.Option(None, "--skip-bad-files/--no-skip-bad-files",
                                                  help="Record unreadable files in manifest.json and go on."),
    processor: Optional[str] = typer.Option(None, help="The analysis: package.module:Class or path/to/file.py:Class "
                                                       "(a processors.SkimProcessor; default: the di-tau processor)."),
    job_id: Optional[int] = typer.Option(None, help="Batch job K of `hepprep submit`: write manifests/job-K.json instead of manifest.json."),
    status: Optional[Path] = typer.Option(None, help="Show the jobs of the batch run in this skim folder (done, failed, running, missing)."),
    merge_manifests: Optional[Path] = typer.Option(None, help="Merge the job manifests of the finished batch run in this folder."),
    config: Optional[Path] = ConfigOption,
    quiet: bool = QuietOption,
) -> None:
    """Run the analysis's processor over every file, write skim Parquet; resumes where it stopped."""
    if status is not None or merge_manifests is not None:
        if fileset is not None or out is not None or (status and merge_manifests):
            raise ConfigError("--status DIR and --merge-manifests DIR take only the skim folder "
                              "of a batch run: give one of them, without FILESET or --out")
        from analysis.batch.status import (
            format_job_states,
            job_states,
            merge_job_manifests,
        )

        if status is not None:
            typer.echo(format_job_states(status, job_states(status)))
        else:
            merged = merge_job_manifests(merge_manifests)
            typer.echo(f"merged {len(merged['files'])} files into {merge_manifests / 'manifest.json'} "
                       f"and cutflow.json", err=True)
        return
    if fileset is None or out is None:
        raise ConfigError("give FILESET and --out DIR (or --status DIR / --merge-manifests DIR for a batch run)")
    cfg = _load(config, skim=dict(executor=executor, workers=workers, chunksize=chunksize,
                                  skip_bad_files=skip_bad_files, processor=processor))
    from analysis.skim.pool import start_worker_server, starts_workers

    if not scheduler and starts_workers(cfg.skim.executor, cfg.skim.workers):
        # Before the skim's own imports: the workers' libraries import beside them, not after.
        start_worker_server(cfg.skim.processor)
    from analysis.skim.runner import run_skim

    run_skim(fileset, out, cfg, scheduler=scheduler, progress=not quiet, job_id=job_id)


@app.command()
def submit(
    fileset: Optional[Path] = typer.Argument(None, help="coffea fileset JSON to split into batch jobs."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Shared skim folder every job writes into (on a shared filesystem)."),
    jobs: Optional[int] = typer.Option(None, help="Number of jobs (each skims whole files)."),
    system: str = typer.Option("slurm", help="slurm (one sbatch array) or htcondor (one condor_submit cluster)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Write the job files and print the submit command only."),
    resubmit_failed: Optional[Path] = typer.Option(None, help="Submit again the failed jobs of the batch run in this folder."),
    cores: int = typer.Option(1, help="CPUs per job (more than 1: futures executor)."),
    memory: str = typer.Option("2GiB", help="Memory per job."),
    queue: Optional[str] = typer.Option(None, help="Slurm partition."),
    extra: Optional[list[str]] = typer.Option(None, help="Further #SBATCH option or HTCondor submit line (repeatable)."),
    chunksize: Optional[int] = typer.Option(None, help="Events per chunk; one Parquet part per chunk."),
    skip_bad_files: Optional[bool] = typer.Option(None, "--skip-bad-files/--no-skip-bad-files",
                                                  help="Jobs record unreadable files in their manifest and go on."),
    processor: Optional[str] = typer.Option(None, help="The analysis: package.module:Class or path/to/file.py:Class."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Skim on a batch system without a dask scheduler: split the fileset into jobs and submit them."""
    if resubmit_failed is not None:
        if fileset is not None or out is not None or jobs is not None:
            raise ConfigError("--resubmit-failed DIR takes only the skim folder of a batch run "
                              "(the jobs are already written); leave out FILESET, --out and --jobs")
        from analysis.batch.submit import resubmit_failed as resubmit

        resubmit(resubmit_failed, dry_run=dry_run)
        return
    if fileset is None or out is None or jobs is None:
        raise ConfigError("give FILESET, --out DIR and --jobs N (or --resubmit-failed DIR)")
    from analysis.batch.submit import submit_skim

    cfg = _load(config, skim=dict(chunksize=chunksize, skip_bad_files=skip_bad_files, processor=processor))
    submit_skim(fileset, out, cfg, jobs=jobs, system=system, dry_run=dry_run, cores=cores,
                memory=memory, queue=queue, extra=extra or ())


def _csv_list(value: Optional[str], cast: Any = str) -> Optional[list[Any]]:
    return None if value is None else [cast(v.strip()) for v in value.split(",") if v.strip()]


@app.command()
def prepare(
    skim_dir: Path = typer.Argument(..., help="Skim folder (<dataset>/part-*.parquet), or a table with --table-format."),
    out: Path = typer.Option(..., "--out", "-o", help="Prepared folder: train/ val/ test/ data/, stats.json, manifest.json."),
    split: Optional[str] = typer.Option(None, help="Train,val,test fractions, e.g. 0.6,0.2,0.2."),
    seed: Optional[int] = typer.Option(None, help="Seed of the hash split and the shuffle."),
    scheduler: Optional[str] = typer.Option(None, help="Existing dask scheduler (tcp://host:8786)."),
    table_format: Optional[str] = typer.Option(None, help="Read SKIM_DIR as a flat table: csv or parquet."),
    label_column: Optional[str] = typer.Option(None, help="Flat table: class column (HiggsML: Label)."),
    weight_column: Optional[str] = typer.Option(None, help="Flat table: weight column (HiggsML: Weight)."),
    id_columns: Optional[str] = typer.Option(None, help="Flat table: comma-separated event identity columns."),
    features: Optional[str] = typer.Option(None, help="Flat table: comma-separated feature columns (default: all numeric)."),
    missing_value: Optional[float] = typer.Option(None, help="Flat table: value meaning 'undefined' (HiggsML: -999)."),
    allow_incomplete: Optional[bool] = typer.Option(None, "--allow-incomplete/--no-allow-incomplete",
                                                    help="Prepare a skim that is not complete (files not done, "
                                                         "datasets without parts); recorded in manifest.json."),
    config: Optional[Path] = ConfigOption,
    quiet: bool = QuietOption,
) -> None:
    """Hash split, class-balanced train_weight, train-only statistics, standardisation, global shuffle."""
    try:
        fractions = _csv_list(split, float)
    except ValueError:
        fractions = []
    if fractions is not None and len(fractions) != 3:
        raise ConfigError(f"--split {split!r}: give three fractions train,val,test such as 0.6,0.2,0.2")
    table = dict(format=table_format, label_column=label_column, weight_column=weight_column,
                 id_columns=_csv_list(id_columns), feature_columns=_csv_list(features),
                 missing_value=missing_value)
    given = {k: v for k, v in table.items() if v is not None}
    cfg = _load(config, prepare=dict(split=fractions, seed=seed, table=given or None,
                                     allow_incomplete=allow_incomplete))
    if table_format is not None:
        from analysis.prepare.table import run_prepare_table

        run_prepare_table(skim_dir, out, cfg, scheduler=scheduler, progress=not quiet)
    else:
        from analysis.prepare.runner import run_prepare

        run_prepare(skim_dir, out, cfg, scheduler=scheduler, progress=not quiet)
    typer.echo(f"prepared: {out}", err=True)


@app.command()
def train(
    prep_dir: Path = typer.Argument(..., help="Prepared directory (output of `hepprep prepare`)."),
    out: Path = typer.Option(..., "--out", "-o", help="The model directory to write (e.g. out/models/xgboost)."),
    model: str = typer.Option("xgboost", help="xgboost or mlp; jet-level folders also pfn, part, cnn."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda (default: config train.device)."),
    scheduler: Optional[str] = typer.Option(None, help="Existing dask scheduler (tcp://host:8786), xgboost only."),
    resume: bool = typer.Option(False, "--resume", help="mlp, pfn, part, cnn: continue the run checkpointed in --out."),
    config: Optional[Path] = ConfigOption,
    quiet: bool = QuietOption,
) -> None:
    """Train a classifier on the prepared splits with early stopping on the validation split."""
    from analysis.train.runner import run_train

    cfg = _load(config)
    model_dir = run_train(prep_dir, out, cfg, model=model, device=device, scheduler=scheduler,
                          resume=resume, progress=not quiet)
    typer.echo(f"model: {model_dir}", err=True)


@app.command()
def evaluate(
    paths: list[Path] = typer.Argument(..., metavar="MODELDIR... PREPDIR",
                                       help="Model directories to compare, then the prepared directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for metrics.json, plots/ and report.html."),
    skim: Optional[Path] = typer.Option(None, help="Skim folder with cutflow.json (default: the one prepare recorded)."),
    allow_other_prepared: bool = typer.Option(False, "--allow-other-prepared",
                                              help="Evaluate models trained on another preparation "
                                                   "(marked in metrics.json and the report)."),
    config: Optional[Path] = ConfigOption,
    quiet: bool = QuietOption,
) -> None:
    """Weighted ROC AUC, AMS, overtraining KS test, physics plots and an HTML report."""
    if len(paths) < 2:
        raise typer.BadParameter(f"got {len(paths)} path; give MODELDIR [MODELDIR ...] PREPDIR",
                                 param_hint="PATHS")
    from analysis.evaluate.runner import run_evaluate

    report = run_evaluate(paths[:-1], paths[-1], out, _load(config), skim_dir=skim,
                          allow_other_prepared=allow_other_prepared, progress=not quiet)
    typer.echo(f"report: {report}")


@app.command()
def export(
    model_dir: Path = typer.Argument(..., help="Model directory (output of `hepprep train`)."),
    onnx: Path = typer.Option(..., "--onnx", help="The .onnx file to write; its input columns go beside it "
                                                  "in <name>.features.json."),
    quiet: bool = QuietOption,
) -> None:
    """Write a model as ONNX that takes raw skim columns (standardisation inside) and gives its scores."""
    from analysis.export.runner import run_export

    typer.echo(f"onnx: {run_export(model_dir, onnx, progress=not quiet)}", err=True)


@app.command("export-hdf5")
def export_hdf5(
    prep_dir: Path = typer.Argument(..., help="Prepared folder of a jet-level skim (`hepprep prepare`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for one <split>.h5 per split."),
    splits: str = typer.Option("train,val,test", help="Comma-separated splits to export."),
    constituents: int = typer.Option(100, help="N: constituents kept per jet (the first by pt; padded, `valid`)."),
    vertices: int = typer.Option(5, help="M: secondary vertices kept per jet."),
    unstandardised: bool = typer.Option(False, "--unstandardised", help="Undo prepare's standardisation."),
    layout: str = typer.Option("salt", help="salt (structured jets, consts, vertices) or weaver."),
    quiet: bool = QuietOption,
) -> None:
    """Write a jet-level prepared folder as fixed-size HDF5 arrays (salt's layout, or weaver's)."""
    from analysis.export.hdf5 import run_export_hdf5
    run_export_hdf5(prep_dir, out, splits=_csv_list(splits) or [], constituents=constituents, vertices=vertices,
                    unstandardised=unstandardised, layout=layout, progress=not quiet)


@app.command("export-images")
def export_images(
    prep_dir: Path = typer.Argument(..., help="Prepared folder of a jet-level skim (`hepprep prepare`)."),
    out: Path = typer.Option(..., "--out", "-o", help="FILE.npz (in memory) or FILE.h5 (chunked)."),
    split: str = typer.Option("test", help="The split whose jets are imaged."),
    channels: Optional[str] = typer.Option(None, help="Comma-separated, of all,photon,charged_hadron,neutral_hadron,track."),
    rotate: bool = typer.Option(False, "--rotate", help="Turn each jet so that its leading subjet points up (AK8)."),
    max_jets: Optional[int] = typer.Option(None, help="At most this many jets, the first of the split."),
    quiet: bool = QuietOption,
) -> None:
    """Write jet images [N, C, 40, 40] built from the constituents, with labels, weights, pt, eta and identity."""
    from analysis.export.images import run_export_images
    run_export_images(prep_dir, out, split=split, channels=_csv_list(channels), rotate=rotate, max_jets=max_jets,
                      progress=not quiet)


@app.command()
def run(
    config: Optional[Path] = ConfigOption,
    out: Path = typer.Option(Path("hepprep-output"), "--out", "-o", help="Folder for every stage's output."),
    fileset: Optional[Path] = typer.Option(None, help="Run on this coffea fileset JSON instead of a generated sample."),
    models: str = typer.Option("xgboost,mlp", help="Comma-separated models to train and compare (taggers: pfn, part, cnn)."),
    kind: str = typer.Option("events", help="The sample generated without --fileset: events, or jets (examples/jets.toml)."),
    scheduler: Optional[str] = typer.Option(None, help="Existing dask scheduler (tcp://host:8786)."),
    quiet: bool = QuietOption,
) -> None:
    """Run the whole pipeline; with no arguments, on the embedded default generated sample."""
    from analysis.generate.kinds import KINDS
    from analysis.pipeline import run_pipeline
    from analysis.train.runner import MODELS
    cfg, chosen = _load(config), tuple(m.strip() for m in models.split(",") if m.strip())
    if kind not in KINDS or not chosen or set(chosen) - set(MODELS):
        raise ConfigError(f"--kind {kind} --models {models}: kinds are {', '.join(KINDS)}; models {', '.join(MODELS)}")
    result = run_pipeline(cfg, out, fileset=fileset, models=chosen, scheduler=scheduler, progress=not quiet, kind=kind)
    typer.echo(f"report: {result.report}")


@app.command()
def provenance(
    folder: Path = typer.Argument(..., help="An output folder: evaluation, model, prepared or skim, "
                                            "or the --out folder of `hepprep run`."),
) -> None:
    """Print the chain of stages behind an output folder, and whether each recorded input still matches."""
    from analysis.lineage import provenance_report

    typer.echo(provenance_report(folder))


@app.command()
def cluster(
    config: Optional[Path] = ConfigOption,
    scheduler: Optional[str] = typer.Option(None, help="Existing dask scheduler (tcp://host:8786)."),
) -> None:
    """Print what the configuration would start or connect to for the dask stages."""
    from analysis.core.cluster import describe_cluster

    typer.echo(describe_cluster(_load(config).cluster, scheduler))


def _os_error_line(err: OSError) -> str:
    """``<file>: <cause>`` of an operating-system error (a full disk, a read-only folder, ...)."""
    if err.errno == errno.ENOSPC or "No space left on device" in str(err):
        cause = "no space left on device (nothing half-written is left; free space and run again)"
    else:  # pyarrow and others put the path in the message only
        cause = (err.strerror if err.filename else None) or " ".join(str(err).split()) or type(err).__name__
    return f"{err.filename}: {cause}" if err.filename else cause


def _freeze_at_exit() -> None:
    """Have the interpreter's exit skip a last garbage collection over every imported object.

    After a stage's imports (coffea pulls in vector, sympy and numba) that collection took
    0.9 s of every `hepprep` run, after its work was done. ``gc.freeze()`` at exit only hides
    the objects alive then from the collector: atexit handlers still run, and every output
    is written and closed before a command returns. Registered once per process.
    """
    global _FREEZE_REGISTERED
    if not _FREEZE_REGISTERED:
        atexit.register(gc.freeze)
        _FREEZE_REGISTERED = True


_FREEZE_REGISTERED = False


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, printing user errors as one line.

    Exit codes: 1 for an input hepprep refuses (`HepprepError`) or an operating-system error
    (no space left, permission denied); 2 for a malformed command line (click's usage
    errors); 130 when interrupted. Messages never repeat a URL's credentials.
    """
    _freeze_at_exit()
    try:
        app(args=argv, prog_name="hepprep", standalone_mode=False)
    except HepprepError as err:
        typer.echo(f"hepprep: error: {redact(' '.join(str(err).split()))}", err=True)
        sys.exit(err.exit_code)
    except OSError as err:
        typer.echo(f"hepprep: error: {redact(_os_error_line(err))}", err=True)
        sys.exit(1)
    except _click_exc.NoArgsIsHelpError as err:
        typer.echo(err.ctx.get_help() if err.ctx else str(err), err=True)
        sys.exit(2)
    except _click_exc.UsageError as err:
        where = err.ctx.command_path if err.ctx else "hepprep"
        typer.echo(f"{where}: error: {err.format_message()}", err=True)
        sys.exit(2)
    except _click_exc.ClickException as err:
        typer.echo(f"hepprep: error: {err.format_message()}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        typer.echo("hepprep: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
