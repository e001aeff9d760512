"""Skim stage test helpers: a small generated sample, skim readers, and an independent re-selection.

The sample reaches tests through the `generated_sample` fixture (conftest.py).

`independent_selection` re-implements the default PHYSICS.md selection and features with
plain uproot + numpy, one event at a time, without importing anything from `processors/`:
the skim must agree with it row by row.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import uproot

from analysis.config import default_config

# NanoAODSchema's notes about cross-references a file lacks (pytest resets the filter the
# skim installs at import) are not the skim's concern.
QUIET_COFFEA = [pytest.mark.filterwarnings("ignore:Missing cross-reference:RuntimeWarning"),
                pytest.mark.filterwarnings("ignore:Branch .* already exists:RuntimeWarning")]

SAMPLE_EVENTS = 20_000
SAMPLE_CHUNKSIZE = 1_500


def generate_sample(root: Path) -> Path:
    """fileset.json of a ~20k-event generated sample (2 files per dataset) under `root`.

    Generated only when `root` holds none yet: the `generated_sample` fixture (conftest.py)
    passes a folder of the session's base temp, so the sample is made once per session.
    """
    fileset = root / "fileset.json"
    if not fileset.exists():
        from analysis.config import config_from_dict
        from analysis.generate.runner import generate_samples

        config = config_from_dict({"generate": {"events": SAMPLE_EVENTS, "files_per_sample": 2,
                                                "data_scale": 0.1, "seed": 11}})
        generate_samples(root, config, progress=False)
    return fileset


def subset_fileset(fileset: Path, datasets: list[str], out: Path) -> Path:
    """A fileset with only `datasets`, absolute paths, written to `out`."""
    raw = json.loads(fileset.read_text())
    sub = {}
    for name in datasets:
        entry = raw[name]
        files = {str((fileset.parent / f).resolve()): t for f, t in entry["files"].items()}
        sub[name] = {"files": files, "metadata": entry["metadata"]}
    out.write_text(json.dumps(sub))
    return out


def read_skim(out_dir: Path) -> pd.DataFrame:
    """Every row of a skim folder, sorted by (dataset, run, luminosityBlock, event)."""
    parts = sorted(Path(out_dir).glob("*/part-*.parquet"))
    frame = pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)
    frame["dataset"] = frame["dataset"].astype(str)
    frame["process"] = frame["process"].astype(str)
    return frame.sort_values(["dataset", "run", "luminosityBlock", "event"]).reset_index(drop=True)


def _dphi(a, b):
    d = (a - b) % (2 * math.pi)
    return d - 2 * math.pi if d > math.pi else d


def _dr(eta1, phi1, eta2, phi2):
    return math.sqrt((eta1 - eta2) ** 2 + _dphi(phi1, phi2) ** 2)


def _sum_mass_pt(objs):
    px = sum(o[0] * math.cos(o[2]) for o in objs)
    py = sum(o[0] * math.sin(o[2]) for o in objs)
    pz = sum(o[0] * math.sinh(o[1]) for o in objs)
    e = sum(math.sqrt((o[0] * math.cosh(o[1])) ** 2 + o[3] ** 2) for o in objs)
    return math.sqrt(max(e * e - px * px - py * py - pz * pz, 0.0)), math.hypot(px, py)


_TAU_BRANCHES = ["pt", "eta", "phi", "mass", "charge", "decayMode", "relIso_all", "idDecayMode",
                 "idIsoMedium", "idAntiEleLoose", "idAntiMuLoose"]
_JET_BRANCHES = ["pt", "eta", "phi", "mass", "puId", "btag"]


def independent_selection(path: str, *, weight_per_event: float) -> tuple[list[dict], dict[str, int]]:
    """The default selection of an outreach-layout file, event by event (rows, cutflow counts)."""
    tree = uproot.open(path)["Events"]
    names = (["run", "luminosityBlock", "event", "PV_npvs", "MET_pt", "MET_phi"]
             + [f"Tau_{b}" for b in _TAU_BRANCHES] + [f"Jet_{b}" for b in _JET_BRANCHES])
    arrays = tree.arrays(names, library="np")
    rows, counts = [], {"all": 0, "two_good_taus": 0, "tau_pair": 0, "good_jets": 0}
    for i in range(tree.num_entries):
        counts["all"] += 1
        tau = {b: arrays[f"Tau_{b}"][i] for b in _TAU_BRANCHES}
        good = [k for k in range(len(tau["pt"]))
                if tau["pt"][k] > 20.0 and abs(tau["eta"][k]) < 2.3 and abs(tau["charge"][k]) == 1
                and tau["idDecayMode"][k] and tau["idIsoMedium"][k] and tau["idAntiEleLoose"][k]
                and tau["idAntiMuLoose"][k]]
        if len(good) < 2:
            continue
        counts["two_good_taus"] += 1
        good.sort(key=lambda k: -float(tau["pt"][k]))  # sort is stable: ties keep file order
        pair = next(((a, b) for x, a in enumerate(good) for b in good[x + 1:]
                     if _dr(float(tau["eta"][a]), float(tau["phi"][a]),
                            float(tau["eta"][b]), float(tau["phi"][b])) > 0.5), None)
        if pair is None:
            continue
        counts["tau_pair"] += 1
        t = [tuple(float(tau[v][k]) for v in ("pt", "eta", "phi", "mass")) for k in pair]
        jet = {b: arrays[f"Jet_{b}"][i] for b in _JET_BRANCHES}
        jets = [k for k in range(len(jet["pt"]))
                if jet["pt"][k] > 30.0 and abs(jet["eta"][k]) < 4.7 and jet["puId"][k]
                and all(_dr(float(jet["eta"][k]), float(jet["phi"][k]), tt[1], tt[2]) > 0.5 for tt in t)]
        if len(jets) < 2:
            continue
        counts["good_jets"] += 1
        jets.sort(key=lambda k: -float(jet["pt"][k]))
        j = [tuple(float(jet[v][k]) for v in ("pt", "eta", "phi", "mass")) for k in jets[:2]]
        met, met_phi = float(arrays["MET_pt"][i]), float(arrays["MET_phi"][i])
        m_vis, pt_vis = _sum_mass_pt(t)
        mjj, ptjj = _sum_mass_pt(j)
        px = t[0][0] * math.cos(t[0][2]) + t[1][0] * math.cos(t[1][2]) + met * math.cos(met_phi)
        py = t[0][0] * math.sin(t[0][2]) + t[1][0] * math.sin(t[1][2]) + met * math.sin(met_phi)
        row = {"run": int(arrays["run"][i]), "luminosityBlock": int(arrays["luminosityBlock"][i]),
               "event": int(arrays["event"][i]), "npv": int(arrays["PV_npvs"][i]),
               "ntaus": len(good), "njets": len(jets), "weight": weight_per_event,
               "tau1_charge": int(tau["charge"][pair[0]]), "tau2_decayMode": int(tau["decayMode"][pair[1]]),
               "tau1_iso": float(tau["relIso_all"][pair[0]]), "jet2_btag": float(jet["btag"][jets[1]]),
               "tau1_pt": t[0][0], "tau2_eta": t[1][1], "jet1_pt": j[0][0], "jet2_phi": j[1][2],
               "m_vis": m_vis, "pt_vis": pt_vis, "dr_tautau": _dr(t[0][1], t[0][2], t[1][1], t[1][2]),
               "mt_tau1": math.sqrt(max(2 * t[0][0] * met * (1 - math.cos(_dphi(t[0][2], met_phi))), 0)),
               "mt_tau2": math.sqrt(max(2 * t[1][0] * met * (1 - math.cos(_dphi(t[1][2], met_phi))), 0)),
               "mjj": mjj, "ptjj": ptjj, "jdeta": abs(j[0][1] - j[1][1]), "pt_h": math.hypot(px, py)}
        rows.append(row)
    return rows, counts


def loosened_config():
    """Default config with a selection loose enough to keep events of the 40-event real DY file."""
    from analysis.config import config_from_dict

    return config_from_dict({"selection": {"tau_iso": "VLoose", "tau_require_anti_lepton": False}})


# The executor comparisons (tests/test_skim_executors.py, test_skim_pool.py): a few datasets
# of the generated sample in small chunks, so that every executor has many chunks to share.
EXECUTOR_DATASETS = ["GluGluToHToTauTau", "VBF_HToTauTau", "TTbar"]
EXECUTOR_CHUNKSIZE = 400


def assert_same_skim(out, ref_out) -> None:
    """Two skim folders hold the same rows, byte-identical parts and the same cutflow."""
    assert read_skim(out).equals(read_skim(ref_out))
    names = sorted(p.relative_to(ref_out) for p in ref_out.glob("*/part-*.parquet"))
    assert names and names == sorted(p.relative_to(out) for p in out.glob("*/part-*.parquet"))
    assert all((out / n).read_bytes() == (ref_out / n).read_bytes() for n in names)
    # the cutflow sums in part order, not arrival order: the same text
    assert (out / "cutflow.json").read_text() == (ref_out / "cutflow.json").read_text()


__all__ = ["EXECUTOR_CHUNKSIZE", "EXECUTOR_DATASETS", "QUIET_COFFEA", "SAMPLE_CHUNKSIZE", "assert_same_skim", "default_config", "generate_sample", "independent_selection",
           "loosened_config", "read_skim", "subset_fileset"]
