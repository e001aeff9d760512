"""Benchmarks (training): CPU against GPU training time of the models (issue 5, acceptance 5; issue 17).

Times the real trainer, ``analysis.train.runner.run_train``, for each requested model (xgboost,
mlp, and a tagger: pfn, part, cnn) on each requested device (cpu, cuda), on the same toy
prepared directory (tests/_train_helpers.write_prepared_dir with prepare's default layout:
100k-row groups, 1M-row files; ``--rows`` train rows, a quarter of that each for val and test)
— for a tagger a jet-level folder prepared by ``hepprep prepare``'s own code from the
synthetic jet skim of tests/_jet_prepare_helpers (``--jets`` jets, QCD against tt, binary) —
and writes bench-output/gpu.json with the CPU/GPU time ratio per model.

The runs are made comparable and bounded by a fixed amount of work:

- xgboost: ``--rounds`` boosting rounds (default 200) with early stopping effectively off
  (``early_stopping_rounds`` = the number of rounds, so it can never trigger); on CPU a
  local dask cluster of ``--cpu-workers`` workers (default 2) x ``--threads`` threads
  (default half the cores), on CUDA the trainer's own local GPU cluster (dask_cuda when
  installed, else one plain worker on the first GPU) with the same threads per worker;
  ``train_seconds`` is the trainer's: cluster start, data read and binning, boosting.
- mlp: ``--epochs`` epochs (default 3) with early stopping off (patience above the epoch
  count), the default network and batch size (``--batch-size``, 1024), ``--threads``
  torch CPU threads, mixed precision on CUDA as the trainer does; ``train_seconds`` is
  the trainer's sum of epoch times (training pass and validation pass of each epoch).
- taggers (default: part): ``--tagger-epochs`` epochs (default 1), the default network,
  N = 64 constituents (the synthetic jets have 5-60), batch 256, ``mixed_precision`` on
  (used on CUDA only); ``rows_per_second`` is jets per second of those epochs.

Other settings are the pipeline defaults; all of them are written into gpu.json. Rounds
and epochs are chosen so that the default run (5M train rows, both models, both devices)
stays under ~8 minutes on the device tool's GPU machine (16 cores): on a shared 2-core
machine ``--quick`` (200k rows) took 1 s to write the data, 26 s for xgboost on CPU
(about 8 s of it starting the cluster) and 4 s for the mlp on CPU; 25 times the rows on 8
times the threads gives roughly 40 s of writing, 1.5-2 min for xgboost and about 1 min for
the mlp on CPU, less on the GPU (an estimate until a GPU session measures it).

A device that cannot be used (no GPU visible, or a backend built without CUDA) is recorded
as ``unavailable`` with the trainer's one-line reason (`resolve_device`'s ConfigError); a
run that crashes is recorded as ``failed`` with its error. Exit code 0 when every requested
run ran or was unavailable for a stated reason, 1 when any failed. Without ``--devices``, on
a machine where CUDA is unusable for every requested model (as under `make bench` on a
machine with no GPU), there is nothing to compare: every run is recorded as ``skipped`` with
the reason and nothing is trained; ``--devices cpu`` times the CPU alone. ``--quick`` is a
smoke run on 200k rows. See README "Checking the GPU path" for running it on the device tool.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests"), str(HERE)]

from _common import measure, write_result  # noqa: E402
from _jet_prepare_helpers import CANDIDATE_COLUMNS, jet_samples, write_jet_skim  # noqa: E402
from _train_helpers import write_prepared_dir  # noqa: E402

from analysis.config import Config, config_from_dict  # noqa: E402
from analysis.core.tagger_config import TAGGER_MODELS as TAGGERS  # noqa: E402
from analysis.errors import ConfigError  # noqa: E402
from analysis.prepare.runner import run_prepare  # noqa: E402
from analysis.train.model_dir import resolve_device  # noqa: E402
from analysis.train.runner import MODELS, run_train  # noqa: E402

DEVICES = ("cpu", "cuda")
DEFAULT_ROWS = 5_000_000
QUICK_ROWS = 200_000
DEFAULT_ROUNDS = 200
DEFAULT_EPOCHS = 3
DEFAULT_JETS = 100_000
QUICK_JETS = 10_000
JETS_PER_SCALE = 3_880  # jets of tests/_jet_prepare_helpers.jet_samples(1.0), simulated ones (~2.5 per event)
TAGGER_N = 64


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def bench_config(*, rounds: int, epochs: int, cpu_workers: int, threads: int,
                 batch_size: int, tagger_epochs: int = 1) -> Config:
    """The pipeline's default config with a fixed amount of training work (see module docstring)."""
    return config_from_dict({
        "train": {
            # early_stopping_rounds = rounds: the gap to the best round stays below it, so
            # every run boosts exactly `rounds` rounds.
            "xgboost": {"num_boost_round": rounds, "early_stopping_rounds": rounds},
            # patience > epochs: no early stop, every run trains exactly `epochs` epochs.
            "mlp": {"max_epochs": epochs, "patience": epochs + 1, "cpu_threads": threads,
                    "batch_size": batch_size},
            "tagger": {"max_epochs": tagger_epochs, "patience": tagger_epochs + 1, "cpu_threads": threads,
                       "constituents": TAGGER_N, "batch_size": 256, "mixed_precision": True},
        },
        # memory_limit "auto": dask gives each worker its share of the machine's memory;
        # the fixed 4GiB default would make a lone GPU worker spill at 5M rows.
        "cluster": {"kind": "local", "n_workers": cpu_workers, "threads_per_worker": threads,
                    "memory_limit": "auto"},
    })


def write_jet_folder(root: Path, jets: int, config: Config) -> Path:
    """A binary (QCD against tt) jet-level prepared folder of about ``jets`` simulated jets, by prepare's code."""
    scale = max(jets / JETS_PER_SCALE, 0.05)
    skim = write_jet_skim(root / "jet-skim", jet_samples(scale), events_per_file=20_000, row_group_rows=5_000)
    prepare = config_from_dict({
        "features": ["jet_pt", "jet_eta", "jet_mass", "jet_ncand"],
        "prepare": {"bucket_rows": 100_000, "row_group_rows": 10_000,
                    "objects": {"constituent_features": list(CANDIDATE_COLUMNS)}},
        "cluster": config.cluster.model_dump()})
    run_prepare(skim, root / "jet-prepared", prepare, progress=False)
    return root / "jet-prepared"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """What the times were measured on: CPU model and cores, the GPU when torch sees one."""
    info = {"cpu_model": _cpu_model(), "cpu_cores_usable": _cores(),
            "cpu_count": os.cpu_count(), "platform": platform.platform()}
    try:
        import torch
    except ImportError:
        info["gpu"] = None
        info["gpu_note"] = "torch not installed: GPU not queried"
        return info
    info["torch_cuda_build"] = torch.version.cuda
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_compute_capability"] = f"{props.major}.{props.minor}"
    else:
        info["gpu"] = None
    return info


def versions() -> dict:
    """Versions of the packages on the training path (None: not installed)."""
    out = {"python": platform.python_version()}
    for name in ("numpy", "pyarrow", "dask", "distributed", "dask-cuda", "xgboost", "torch",
                 "scikit-learn", "pydantic"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        import xgboost
        out["xgboost_use_cuda"] = bool(xgboost.build_info().get("USE_CUDA"))
    except ImportError:
        pass
    return out


def _settings(config: Config) -> dict:
    xgb, mlp, cluster = config.train.xgboost, config.train.mlp, config.cluster
    tagger = config.train.tagger
    return {
        "tagger": {"max_epochs": tagger.max_epochs, "patience": tagger.patience,
                   "early_stopping": "off (patience > max_epochs)", "constituents": tagger.constituents,
                   "batch_size": tagger.batch_size, "cpu_threads": tagger.cpu_threads,
                   "networks": {name: getattr(tagger, name).model_dump() for name in TAGGERS},
                   "mixed_precision": "on CUDA only"},
        "xgboost": {"num_boost_round": xgb.num_boost_round,
                    "early_stopping_rounds": xgb.early_stopping_rounds,
                    "early_stopping": "off (early_stopping_rounds = num_boost_round)",
                    "max_depth": xgb.max_depth, "eta": xgb.eta, "subsample": xgb.subsample,
                    "tree_method": xgb.tree_method,
                    "cpu_cluster": f"{cluster.n_workers} workers x {cluster.threads_per_worker} threads",
                    "cuda_cluster": "the trainer's local GPU cluster (dask_cuda, else one worker), "
                                    f"{cluster.threads_per_worker} threads per worker"},
        "mlp": {"max_epochs": mlp.max_epochs, "patience": mlp.patience,
                "early_stopping": "off (patience > max_epochs)", "hidden": mlp.hidden,
                "batch_size": mlp.batch_size, "shuffle_buffer": mlp.shuffle_buffer,
                "num_workers": mlp.num_workers, "cpu_threads": mlp.cpu_threads,
                "mixed_precision": "on CUDA only"},
    }


def run_one(prep: Path, model_dir: Path, config: Config, *, model: str, device: str,
            progress: bool) -> dict:
    """Train one model on one device; a dict with ``status`` ran, unavailable or failed."""
    try:
        resolve_device(device, model=model)
    except ConfigError as err:
        return {"status": "unavailable", "reason": str(err)}
    cuda_peak = None
    if device == "cuda" and model != "xgboost":
        import torch
        torch.cuda.reset_peak_memory_stats()
    try:
        measured = measure(lambda: run_train(prep, model_dir, config, model=model, device=device,
                                             progress=progress))
    except Exception as err:  # noqa: BLE001 - recorded in gpu.json and the exit code
        traceback.print_exc()
        return {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    if device == "cuda" and model != "xgboost":
        import torch
        cuda_peak = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    info = json.loads((model_dir / "model_info.json").read_text())
    entry = {
        "status": "ran",
        "device": info["device"],
        "train_seconds": info["train_seconds"],
        "run_train_wall_seconds": round(measured.seconds, 2),
        "train_rows": info["train_rows"],
        "val_rows": info["val_rows"],
        "val_auc": round(info["best_val_auc"], 4),
        "peak_rss_mib": round(measured.peak_rss_mib, 1),
    }
    if model == "xgboost":
        entry.update(rounds=info["rounds_run"], dask_workers=info["dask_workers"],
                     cluster=info.get("cluster"))
    else:
        entry.update(epochs=info["epochs_run"], mixed_precision=info["mixed_precision"],
                     cuda_peak_allocated_mib=cuda_peak,
                     rows_per_second=round(info["train_rows"] * info["epochs_run"] / info["train_seconds"], 1))
    if model in TAGGERS:
        entry["n_parameters"] = info["n_parameters"]
    return entry


def _csv(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"{what}: {value!r}; use a comma-separated subset of "
                                         f"{','.join(allowed)}")
    return list(dict.fromkeys(items))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None,
                        help=f"train rows (val, test: a quarter each); default {DEFAULT_ROWS:_}")
    parser.add_argument("--quick", action="store_true", help=f"smoke run on {QUICK_ROWS:_} rows")
    parser.add_argument("--devices", default=None,
                        type=lambda v: _csv(v, DEVICES, "--devices"),
                        help="default cpu,cuda (without a usable GPU: nothing to compare, "
                             "skipped; name cpu to time the CPU alone)")
    parser.add_argument("--models", default="xgboost,mlp,part",
                        type=lambda v: _csv(v, MODELS, "--models"), help="default xgboost,mlp,part")
    parser.add_argument("--out", default="bench-output", help="folder of gpu.json")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="xgboost boosting rounds")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="mlp epochs")
    parser.add_argument("--batch-size", type=int, default=1024, help="mlp batch size")
    parser.add_argument("--jets", type=int, default=None,
                        help=f"taggers: simulated jets of the jet folder; default {DEFAULT_JETS:_} "
                             f"(--quick: {QUICK_JETS:_})")
    parser.add_argument("--tagger-epochs", type=int, default=1, help="tagger epochs")
    parser.add_argument("--cpu-workers", type=int, default=2,
                        help="dask workers of the CPU xgboost run")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per dask worker and torch CPU threads "
                             "(default: half the usable cores, at least 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars from the trainers")
    args = parser.parse_args(argv)
    if args.quick and args.rows is not None:
        parser.error("--quick and --rows: give one")
    rows = QUICK_ROWS if args.quick else (args.rows or DEFAULT_ROWS)
    jets = args.jets or (QUICK_JETS if args.quick else DEFAULT_JETS)
    if rows < 1000 or args.rounds < 1 or args.epochs < 1 or args.cpu_workers < 1 or args.tagger_epochs < 1:
        parser.error("--rows >= 1000, --rounds, --epochs, --tagger-epochs and --cpu-workers >= 1")
    threads = args.threads or max(1, _cores() // 2)
    config = bench_config(rounds=args.rounds, epochs=args.epochs, cpu_workers=args.cpu_workers,
                          threads=threads, batch_size=args.batch_size, tagger_epochs=args.tagger_epochs)
    devices = args.devices or list(DEVICES)
    unusable = {}
    for model in args.models:
        try:
            resolve_device("cuda", model=model)
        except ConfigError as err:
            unusable[model] = str(err)
    # `make bench` runs every bench_*.py: on a machine without a usable GPU the default
    # run has nothing to compare, and minutes of CPU training would only repeat bench_train.
    skip_all = args.devices is None and len(unusable) == len(args.models)
    split_rows = (rows, rows // 4, rows // 4)
    figures: dict = {
        "mode": "quick" if args.quick else ("full" if rows == DEFAULT_ROWS else "custom"),
        "rows": dict(zip(("train", "val", "test"), split_rows)),
        "jets": jets if any(model in TAGGERS for model in args.models) else None,
        "settings": _settings(config),
        "machine": machine_info(),
        "versions": versions(),
    }
    print(f"bench_gpu: {rows:_} train rows, models {','.join(args.models)}, devices "
          f"{','.join(devices)}; {figures['machine']['cpu_cores_usable']} cores, "
          f"GPU {figures['machine'].get('gpu')}", flush=True)
    begin = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    runs: dict[str, dict] = {}
    try:
        if skip_all:
            for model in args.models:
                for device in devices:
                    runs[f"{model}-{device}"] = {
                        "status": "skipped",
                        "reason": f"no usable CUDA device for any requested model ({unusable[model]}); "
                                  f"pass --devices cpu to time the CPU alone"}
            print(f"bench_gpu: skipped: CUDA unusable for {', '.join(args.models)}; "
                  f"pass --devices cpu to time the CPU alone", flush=True)
            return _finish(figures, runs, args, devices, begin)
        t0 = time.perf_counter()
        # Prepare's default layout: files of up to 1M rows with 100k-row groups.
        prep = write_prepared_dir(work / "prepared", rows=split_rows, row_group_rows=100_000,
                                  file_rows=1_000_000, seed=5)
        figures["write_seconds"] = round(time.perf_counter() - t0, 1)
        if any(model in TAGGERS for model in args.models):
            t0 = time.perf_counter()
            jet_prep = write_jet_folder(work, jets, config)
            figures["jet_prepare_seconds"] = round(time.perf_counter() - t0, 1)
        for model in args.models:
            for device in devices:
                name = f"{model}-{device}"
                print(f"bench_gpu: {name} ...", flush=True)
                runs[name] = run_one(jet_prep if model in TAGGERS else prep, work / "models" / name, config,
                                     model=model, device=device, progress=not args.quiet)
                summary = {k: runs[name].get(k) for k in ("status", "train_seconds", "val_auc",
                                                          "reason", "error") if k in runs[name]}
                print(f"bench_gpu: {name}: {summary}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _finish(figures, runs, args, devices, begin)


def _finish(figures: dict, runs: dict, args: argparse.Namespace, devices: list[str],
            begin: float) -> int:
    """Ratios, gpu.json, the summary lines; the exit code (1 when a run failed)."""
    figures["runs"] = runs
    ratios = {}
    for model in args.models:
        cpu, gpu = runs.get(f"{model}-cpu", {}), runs.get(f"{model}-cuda", {})
        if cpu.get("status") == "ran" and gpu.get("status") == "ran":
            ratios[model] = round(cpu["train_seconds"] / gpu["train_seconds"], 2)
    figures["cpu_over_cuda_train_seconds"] = ratios
    failed = sorted(name for name, entry in runs.items() if entry["status"] == "failed")
    figures["failed"] = failed
    figures["total_seconds"] = round(time.perf_counter() - begin, 1)
    write_result("gpu", figures, args.out)
    for model in args.models:
        cells = []
        for device in devices:
            entry = runs.get(f"{model}-{device}", {})
            cells.append(f"{device} {entry['train_seconds']:.1f} s (val AUC {entry['val_auc']})"
                         if entry.get("status") == "ran" else f"{device} {entry.get('status')}")
        ratio = f"; CPU/GPU time {ratios[model]}x" if model in ratios else ""
        print(f"bench_gpu: {model}: {', '.join(cells)}{ratio}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
