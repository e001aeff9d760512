"""Tests of the sample generator (generate stage): a golden reference of a small generated sample.

Other stages' tests build on generated samples, so an unintended change of the generator
(a different random stream, a changed cut, a lost branch) must show up here rather than
as a puzzling change elsewhere. The reference holds per-dataset event counts, sumw and a
few summary numbers of the arrays; after an intended physics change regenerate it with
``HEPPREP_UPDATE_REFERENCE=1 .venv/bin/python -m pytest tests/test_generate_reference.py``
and commit the new file with the change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import uproot

from analysis.config import config_from_dict
from analysis.generate.runner import generate_samples

REFERENCE = Path(__file__).parent / "reference" / "generate_small.json"


def _summary(out: Path) -> dict:
    fileset = json.loads((out / "fileset.json").read_text())
    summary = {}
    for name, entry in fileset.items():
        arrays = [uproot.open(out / f)["Events"].arrays(["nTau", "nJet", "Tau_pt", "Jet_pt", "MET_pt", "PV_npvs"],
                                                         library="ak") for f in entry["files"]]
        summary[name] = {
            "metadata": entry["metadata"],
            "n_tau": int(sum(int(np.sum(a.nTau)) for a in arrays)),
            "n_jet": int(sum(int(np.sum(a.nJet)) for a in arrays)),
            "sum_tau_pt": float(sum(float(np.sum(a.Tau_pt)) for a in arrays)),
            "sum_met_pt": float(sum(float(np.sum(a.MET_pt)) for a in arrays)),
            "sum_npv": int(sum(int(np.sum(a.PV_npvs)) for a in arrays)),
        }
    return summary


def test_small_sample_matches_the_golden_reference(tmp_path):
    config = config_from_dict({"generate": {"events": 2000, "files_per_sample": 1, "seed": 5, "data_scale": 0.05}})
    generate_samples(tmp_path, config, progress=False)
    summary = _summary(tmp_path)
    if os.environ.get("HEPPREP_UPDATE_REFERENCE"):
        REFERENCE.parent.mkdir(exist_ok=True)
        REFERENCE.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    reference = json.loads(REFERENCE.read_text())
    assert summary.keys() == reference.keys()
    for name, ref in reference.items():
        got = summary[name]
        meta, ref_meta = dict(got["metadata"]), dict(ref["metadata"])
        if "sumw" in ref_meta:  # MC only
            assert meta.pop("sumw") == pytest.approx(ref_meta.pop("sumw"), rel=1e-12), name
        assert meta == ref_meta, name
        for key in ("n_tau", "n_jet", "sum_npv"):
            assert got[key] == ref[key], f"{name}.{key}: {got[key]} != {ref[key]} (see the module docstring)"
        for key in ("sum_tau_pt", "sum_met_pt"):  # float32 sums: allow the last digits to move
            assert got[key] == pytest.approx(ref[key], rel=1e-5), f"{name}.{key}"
