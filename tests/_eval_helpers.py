"""Evaluation tests: writers of a small prepared directory and a real XGBoost model directory.

They follow the cross-stage contracts (DESIGN.md "Prepared Parquet", "Models and evaluation")
so the evaluation stage can be tested on its own: toy events for four processes with
class-dependent feature shapes, physics weights (a few negative), a hash-free random
train/val/test split, stats.json computed on the training split, standardised feature
columns, pseudo-data in <prep>/data, a cutflow in the skim directory the manifest names,
and a tiny XGBoost model trained on the standardised training split.
"""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from _train_helpers import write_prepared_manifest

from analysis.config import Config, config_from_dict

TOY_FEATURES = ["tau1_pt", "tau2_eta", "jet1_btag", "njets", "m_vis", "mjj"]
SPLIT = (0.6, 0.2, 0.2)
SEED = 11

# process -> (dataset, label, events, weight per event)
TOY_PROCESSES = {
    "ggH": ("GluGluToHToTauTau", 1, 500, 0.02),
    "VBF": ("VBF_HToTauTau", 1, 300, 0.005),
    "DY": ("DYJetsToLL", 0, 1400, 2.0),
    "TT": ("TTbar", 0, 600, 0.5),
}


def toy_config(features: list[str] | None = None) -> Config:
    """A configuration whose feature list is the toy one (samples keep the defaults)."""
    return config_from_dict({"features": list(features or TOY_FEATURES),
                             "prepare": {"split": list(SPLIT), "seed": SEED}})


def _raw_events(process: str, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    signal = process in ("ggH", "VBF")
    m_vis = {"ggH": (85, 15), "VBF": (85, 15), "DY": (62, 12), "TT": (90, 35)}[process]
    return {
        "tau1_pt": 30 + rng.exponential(28 if signal else 18, n),
        "tau2_eta": np.clip(rng.normal(0, 1.2, n), -2.3, 2.3),
        "jet1_btag": rng.beta(5, 2, n) if process == "TT" else rng.beta(1, 4, n),
        "njets": (2 + rng.poisson(0.9 if signal else 0.4, n)).astype(np.float64),
        "m_vis": np.clip(rng.normal(*m_vis, n), 5, None),
        "mjj": rng.exponential(450 if process == "VBF" else 140, n) + 20,
    }


def _weighted_quantile(x: np.ndarray, w: np.ndarray, q: float) -> float:
    order = np.argsort(x)
    cum = np.cumsum(w[order]) / w.sum()
    return float(x[order][np.searchsorted(cum, q)])


def _stats(train: pd.DataFrame, features: list[str]) -> dict:
    w = np.abs(train["weight"].to_numpy())
    out = {}
    for name in features:
        x = train[name].to_numpy(np.float64)
        mean = float(np.average(x, weights=w))
        std = float(np.sqrt(np.average((x - mean) ** 2, weights=w))) or 1.0
        out[name] = {"mean": mean, "std": std, "min": float(x.min()), "max": float(x.max()),
                     "median": _weighted_quantile(x, w, 0.5), "q16": _weighted_quantile(x, w, 0.16),
                     "q84": _weighted_quantile(x, w, 0.84)}
    return out


def _standardise(frame: pd.DataFrame, stats: dict, features: list[str]) -> pd.DataFrame:
    frame = frame.copy()
    for name in features:
        s = stats["features"][name]
        frame[name] = ((frame[name] - s["mean"]) / s["std"]).astype(np.float32)
    return frame


def _train_weight(frame: pd.DataFrame) -> np.ndarray:
    # Equal total weight per class, mean 1 (the prepare contract); |weight| because
    # XGBoost refuses negative training weights.
    out = np.empty(len(frame))
    for label in (0, 1):
        mask = (frame["label"] == label).to_numpy()
        w = np.abs(frame.loc[mask, "weight"].to_numpy())
        out[mask] = w * (len(frame) / 2) / w.sum()
    return out


def _write_parts(frame: pd.DataFrame, folder: Path, parts: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, chunk in enumerate(np.array_split(np.arange(len(frame)), parts)):
        pq.write_table(pa.Table.from_pandas(frame.iloc[chunk], preserve_index=False),
                       folder / f"part-{i:05d}.parquet", row_group_size=500)


def write_skim_cutflow(skim_dir: Path) -> Path:
    """A cutflow.json in the skim layout: per dataset, events and sum of weights per cut."""
    skim_dir.mkdir(parents=True, exist_ok=True)
    cutflow = {}
    for process, (dataset, _label, n, w) in TOY_PROCESSES.items():
        counts = [n * 5, n * 3, n * 2, n]
        # the skim's layout (analysis/skim_manifest.py build_cutflow)
        cutflow[dataset] = {"process": process, "label": _label,
                            "cuts": {cut: {"events": c, "sum_weight": c * w}
                                     for cut, c in zip(["all", "two_good_taus", "tau_pair", "good_jets"], counts)}}
    path = skim_dir / "cutflow.json"
    path.write_text(json.dumps(cutflow, indent=1))
    return path


def write_prepared(prep_dir: Path, *, features: list[str] | None = None, with_data: bool = True,
                   skim_dir: Path | None = None) -> Path:
    """Write a prepared directory per the contract and return it."""
    features = list(features or TOY_FEATURES)
    rng = np.random.default_rng(SEED)
    frames = []
    for process, (dataset, label, n, w) in TOY_PROCESSES.items():
        raw = _raw_events(process, n, rng)
        frame = pd.DataFrame({name: raw[name].astype(np.float32) for name in features})
        weight = np.full(n, w)
        if process == "DY":  # NLO-like negative weights on a few events
            weight[rng.random(n) < 0.03] *= -1
        frame["weight"] = weight
        frame["label"] = np.int8(label)
        frame["dataset"] = dataset
        frame["process"] = process
        frame["event"] = np.arange(n, dtype=np.uint64)
        frames.append(frame)
    events = pd.concat(frames, ignore_index=True)
    events["split"] = rng.choice(["train", "val", "test"], size=len(events), p=SPLIT)
    train = events[events["split"] == "train"]
    stats = {"feature_order": features, "features": _stats(train, features),
             "transform": "standardised = (raw - mean) / std", "computed_on": "train",
             "sum_weights": float(train["weight"].sum()), "negative_weights": "keep",
             "split": {"fractions": list(SPLIT), "seed": SEED},
             "class_totals": {str(k): float(v) for k, v in train.groupby("label")["weight"].sum().items()}}
    prep_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        part = events[events["split"] == split].reset_index(drop=True)
        part = _standardise(part, stats, features)
        part["train_weight"] = _train_weight(part)
        _write_parts(part, prep_dir / split)
    if with_data:
        # Pseudo-data: each MC event appears Poisson(weight) times, so the expected number
        # of data events in any bin is the summed MC yield there (negative weights -> 0).
        mc = events.copy()
        keep = rng.poisson(np.clip(mc["weight"].to_numpy(), 0, None))
        data = mc.loc[np.repeat(mc.index, keep), features].reset_index(drop=True)
        data["weight"] = 1.0
        data["label"] = np.int8(-1)
        data["dataset"] = "Run2012B_TauPlusX"
        data["process"] = "data"
        data["split"] = "data"
        _write_parts(_standardise(data, stats, features), prep_dir / "data", parts=1)
    (prep_dir / "stats.json").write_text(json.dumps(stats, indent=1))
    manifest = {"seed": SEED}
    if skim_dir is not None:
        write_skim_cutflow(skim_dir)
        manifest["source"] = str(skim_dir)  # what prepare writes: the resolved skim folder
    write_prepared_manifest(prep_dir, **manifest)
    return prep_dir


def write_xgboost_model(model_dir: Path, prep_dir: Path, *, rounds: int = 30,
                        features: list[str] | None = None) -> Path:
    """Train a tiny XGBoost model on the standardised training split; write the model dir."""
    import xgboost as xgb

    stats = json.loads((prep_dir / "stats.json").read_text())
    features = list(features or stats["feature_order"])
    train = pd.read_parquet(prep_dir / "train")
    val = pd.read_parquet(prep_dir / "val")
    dtrain = xgb.DMatrix(train[features], label=train["label"], weight=train["train_weight"],
                         feature_names=features)
    dval = xgb.DMatrix(val[features], label=val["label"], weight=val["train_weight"],
                       feature_names=features)
    params = {"objective": "binary:logistic", "eval_metric": "logloss", "max_depth": 3,
              "eta": 0.3, "seed": 7, "nthread": 1}
    history: dict = {}
    booster = xgb.train(params, dtrain, num_boost_round=rounds, evals=[(dtrain, "train"), (dval, "val")],
                        early_stopping_rounds=5, evals_result=history, verbose_eval=False)
    model_dir.mkdir(parents=True, exist_ok=True)
    booster.save_model(model_dir / "model.json")
    (model_dir / "features.json").write_text(json.dumps(features))
    model_stats = dict(stats, feature_order=features,
                       features={k: stats["features"][k] for k in features})
    (model_dir / "stats.json").write_text(json.dumps(model_stats, indent=1))
    (model_dir / "history.json").write_text(json.dumps(history))
    (model_dir / "model_info.json").write_text(json.dumps({
        "model": "xgboost", "device": "cpu", "params": params,
        "best_iteration": int(booster.best_iteration), "train_seconds": 0.1,
        "prepared_dir": str(prep_dir),
        "prepared_fingerprint": json.loads((prep_dir / "manifest.json").read_text())["fingerprint"]}))
    return model_dir


class BalancedHTML(HTMLParser):
    """Collects unbalanced tags and the <img> attributes of a page."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.images = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def assert_report_embeds_every_plot(out: Path, metrics: dict) -> None:
    """report.html parses with balanced tags; every plot of metrics.json is named in it and
    embedded byte for byte as a data: URI, and nothing else is."""
    text = (out / "report.html").read_text()
    parser = BalancedHTML()
    parser.feed(text)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    assert text.startswith("<!DOCTYPE html>")
    srcs = [img["src"] for img in parser.images]
    assert all(src.startswith("data:image/png;base64,") for src in srcs)
    embedded = {base64.b64decode(src.split(",", 1)[1]) for src in srcs}
    for rel in metrics["plots"]:
        assert rel in text, rel  # referenced by name in the caption
        assert (out / rel).read_bytes() in embedded, rel
    assert len(srcs) == len(metrics["plots"])
