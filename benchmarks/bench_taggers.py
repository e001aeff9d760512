"""Benchmarks (taggers): PFN, ParT and the CNN against xgboost on jet features, and their training throughput.

On the generated AK8 jet sample (`hepprep generate --kind jets`, examples/jets.toml: H->bb,
W->qq, t->bqq and QCD jets, the classes from generator matching), prepared once with the
jet-level features of the issue (pt, mass, soft-drop mass, tau21, constituent count):

1. physics (issue "Taggers", acceptance 1): xgboost on those five features, and PFN, ParT and
   the CNN on the constituents with the same five jet features concatenated, each trained
   with its defaults on CPU (ParT on 32 constituents, `CPU_SETTINGS`) and evaluated by `hepprep
   evaluate`: the background rejection 1/eps_B at eps_S = 50 % of each signal class
   against QCD (metrics.json ``tagger``), with its statistical uncertainty; the goal is each
   network above xgboost for every signal class.
2. throughput (acceptance 5): training jets/s of each network (train rows x epochs / the
   epochs' seconds, from history.json), the loader's share (one epoch of the same loader
   with no network, over the training epoch's time), and the loader alone against a
   pyarrow read of the same files and columns (jets/s ratio).

Figures go to bench-output/taggers.json. ``--quick``: a small sample and one epoch each
(a smoke run; its physics figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests"), str(HERE)]

import pyarrow.parquet as pq  # noqa: E402
from _common import measure, write_result  # noqa: E402

EXAMPLE = HERE.parent / "examples" / "jets.toml"
JET_FEATURES = ["jet_pt", "jet_mass", "jet_msoftdrop", "jet_tau21", "jet_ncand"]
MODELS = ("xgboost", "pfn", "part", "cnn")


# What each network trains with on the 2-core CPU this runs on: ParT's pairwise features cost
# N^2 per jet (on this machine about 70 jets/s at N = 100, 350-570 at N = 32 with the load of
# the day), so it reads each jet's 32 leading constituents and trains fewer epochs; PFN and
# the CNN take the defaults (N = 100).
CPU_SETTINGS = {"pfn": {"max_epochs": 20}, "part": {"constituents": 32, "max_epochs": 8}, "cnn": {"max_epochs": 10}}


def _config(quick: bool, events: int, model: str = "xgboost"):
    from analysis import load_config

    # The networks see the constituents and the same five jet features as xgboost (concatenated
    # after the per-particle part): what they add is what the particles tell beyond those.
    tagger = {"jet_features": True, **CPU_SETTINGS.get(model, {})}
    if quick:
        tagger["max_epochs"] = 1
    return load_config(EXAMPLE, {"features": JET_FEATURES, "generate": {"events": events},
                                 "train": {"tagger": tagger}, "cluster": {"n_workers": 2}})


def _prepared(work: Path, config) -> Path:
    from analysis import run_skim
    from analysis.generate.kinds import generate_kind
    from analysis.prepare.runner import run_prepare

    fileset = generate_kind("jets", work / "gen", config, progress=False)
    run_skim(fileset, work / "skim", config, progress=False)
    run_prepare(work / "skim", work / "prepared", config, progress=False)
    return work / "prepared"


def _loader_epoch(prep: Path, model_dir: Path):
    """One epoch of the model's own training loader (its layout and loader settings), no network."""
    from analysis.train.jet_stream import JetBatchStream
    from analysis.train.predict import load_model

    model = load_model(model_dir)
    stats = json.loads((prep / "stats.json").read_text())
    files = sorted((prep / "train").glob("part-*.parquet"))
    params = model.info["params"]
    stream = JetBatchStream(files, model.layout, stats=stats, batch_size=params.get("batch_size", 256),
                            shuffle_buffer=params.get("shuffle_buffer", 20_000), seed=1, as_numpy=True,
                            targets=("class",))

    def epoch():
        stream.set_epoch(stream.epoch + 1)
        return sum(len(x) for x, _, _ in stream)

    return epoch, files, [*model.input_columns, "class", "train_weight"]


def bench(work: Path, *, quick: bool) -> dict:
    from analysis.evaluate.runner import run_evaluate
    from analysis.train.runner import run_train

    events = 6_000 if quick else 30_000
    config = _config(quick, events)
    t0 = time.perf_counter()
    prep = _prepared(work, config)
    figures: dict = {"prepare_seconds": round(time.perf_counter() - t0, 1)}
    figures["jets"] = {split: sum(pq.read_metadata(f).num_rows for f in sorted((prep / split).glob("*.parquet")))
                       for split in ("train", "val", "test")}
    models = {}
    for model in MODELS:
        out = work / "models" / model
        t0 = time.perf_counter()
        run_train(prep, out, _config(quick, events, model), model=model, device="cpu", progress=False)
        models[model] = out
        seconds = time.perf_counter() - t0
        history = json.loads((out / "history.json").read_text())
        entry = {"train_command_seconds": round(seconds, 1), "settings": CPU_SETTINGS.get(model, {})}
        if model != "xgboost":
            epochs = len(history["epoch"])
            entry.update({"epochs": epochs, "epoch_seconds": round(sum(history["seconds"]) / epochs, 2),
                          "train_jets_per_s": round(figures["jets"]["train"] * epochs / sum(history["seconds"]))})
            epoch, files, columns = _loader_epoch(prep, out)
            epoch()
            loader = min(measure(epoch, sample_rss=False).seconds for _ in range(2))
            floor = min(measure(lambda: sum(pq.read_table(f, columns=columns).num_rows for f in files),
                                sample_rss=False).seconds for _ in range(3))
            entry.update({"loader_epoch_seconds": round(loader, 2),
                          "loader_share_of_training": round(loader / entry["epoch_seconds"], 3),
                          "loader_jets_per_s": round(figures["jets"]["train"] / loader),
                          "loader_ratio_vs_pyarrow": round(floor / loader, 3)})
        figures[model] = entry
    run_evaluate([models[m] for m in MODELS], prep, work / "evaluation", config, progress=False)
    metrics = json.loads((work / "evaluation" / "metrics.json").read_text())
    rejection: dict = {}
    for name, model_metrics in metrics["models"].items():
        for signal, entry in (model_metrics.get("tagger") or {}).items():
            point = entry["working_points"].get("0.5")  # keyed by eps_S (analysis.evaluate.taggers)
            bins = (entry.get("pt_bins") or {}).get("bins") or []
            rejection.setdefault(signal, {})[name] = (None if point is None else
                                                      {"rejection": point.get("rejection"),
                                                       "uncertainty": point.get("rejection_uncertainty"),
                                                       "auc": entry.get("auc"),
                                                       "in_pt_bins": [(b.get("working_points") or {}).get("0.5", {})
                                                                      .get("rejection") for b in bins]})
    figures["rejection_at_50"] = rejection
    figures["pt_edges"] = (metrics.get("tagger") or {}).get("pt_edges")
    beats = {}
    for signal, by_model in rejection.items():
        base = (by_model.get("xgboost") or {}).get("rejection") or 0.0
        for model in ("pfn", "part", "cnn"):
            value = (by_model.get(model) or {}).get("rejection")
            beats[f"{model}_{signal}"] = value is not None and value > base
    figures["beats_xgboost"] = beats
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--out", default="bench-output", help="folder for taggers.json")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-taggers-"))
    work.mkdir(parents=True, exist_ok=True)
    figures: dict = {"mode": "quick" if args.quick else "full", "features": JET_FEATURES}
    rc = 0
    try:
        figures.update(bench(work, quick=args.quick))
    except Exception as err:  # noqa: BLE001 - recorded in the result and the exit code
        figures["error"] = f"{type(err).__name__}: {err}"
        rc = 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    write_result("taggers", figures, args.out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
