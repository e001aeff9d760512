"""Bring your own analysis: a processor in a file of the user's, outside the package, through every stage.

A Z->mumu selection written against the `processors.SkimProcessor` contract in a temporary
``.py`` file is skimmed with ``hepprep skim --processor that_file.py:ZMuMu`` on the real
NanoAOD fixture and on a generated sample; its rows are checked against plain uproot +
numpy; then prepare, train and evaluate run on its columns (the features its class
declares), and the skim machinery behaves as for the di-tau processor: parts, manifest,
cutflow, resume after SIGKILL, --skip-bad-files, and a new version re-runs its chunks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import uproot

from _skim_helpers import QUIET_COFFEA
from analysis import config_from_dict, run_evaluate, run_prepare, run_skim, run_train
from analysis.cli import main

pytestmark = QUIET_COFFEA
REPO = Path(__file__).resolve().parents[1]

ZMUMU = '''
"""A Z->mumu selection: two opposite-charge muons in a mass window."""
import awkward as ak
from pydantic import BaseModel

from processors import SkimProcessor


class Options(BaseModel):
    muon_pt_min: float = 3.0
    muon_abs_eta_max: float = 2.4
    mass_min: float = 0.0
    mass_max: float = 1000.0


class ZMuMu(SkimProcessor):
    name = "zmumu"
    version = "VERSION"
    Options = Options
    columns = {"mu1_pt": "float32", "mu2_pt": "float32", "mu1_eta": "float32", "m_mumu": "float32",
               "nmuons": "int16"}
    default_features = ("mu1_pt", "mu2_pt", "mu1_eta", "m_mumu", "nmuons")
    branches = ("Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_charge")

    def select(self, events, cutflow):
        o = self.options
        muons = events.Muon[(events.Muon.pt > o.muon_pt_min) & (abs(events.Muon.eta) < o.muon_abs_eta_max)]
        two = ak.num(muons) >= 2
        cutflow.step("two_muons", two)
        muons = muons[two]
        mu1, mu2 = muons[:, 0], muons[:, 1]
        opposite = mu1.charge != mu2.charge
        cutflow.step("opposite_charge", opposite)
        muons, mu1, mu2 = muons[opposite], mu1[opposite], mu2[opposite]
        mass = (mu1 + mu2).mass
        window = (mass > o.mass_min) & (mass < o.mass_max)
        cutflow.step("mass_window", window)
        return {"mu1_pt": mu1.pt[window], "mu2_pt": mu2.pt[window], "mu1_eta": mu1.eta[window],
                "m_mumu": mass[window], "nmuons": ak.num(muons[window])}
'''


def _write_processor(folder: Path, version: str = "1") -> Path:
    path = folder / "zmumu_analysis.py"
    path.write_text(ZMUMU.replace("VERSION", version))
    return path


def independent_zmumu(path: str, *, pt_min: float = 3.0, eta_max: float = 2.4) -> pd.DataFrame:
    """The same selection, event by event, with uproot and numpy only (no hepprep import)."""
    tree = uproot.open(path)["Events"]
    a = tree.arrays(["run", "luminosityBlock", "event", "Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass",
                     "Muon_charge"], library="np")
    rows = []
    for i in range(tree.num_entries):
        good = [k for k in range(len(a["Muon_pt"][i]))
                if a["Muon_pt"][i][k] > pt_min and abs(a["Muon_eta"][i][k]) < eta_max]
        if len(good) < 2 or a["Muon_charge"][i][good[0]] == a["Muon_charge"][i][good[1]]:
            continue
        p = []
        for k in good[:2]:
            pt, eta, phi, m = (float(a[f"Muon_{v}"][i][k]) for v in ("pt", "eta", "phi", "mass"))
            p.append((pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta),
                      np.sqrt((pt * np.cosh(eta)) ** 2 + m * m)))
        px, py, pz, e = (sum(v) for v in zip(*p))
        rows.append({"event": int(a["event"][i]), "mu1_pt": float(a["Muon_pt"][i][good[0]]),
                     "m_mumu": float(np.sqrt(max(e * e - px * px - py * py - pz * pz, 0.0))),
                     "nmuons": len(good)})
    return pd.DataFrame(rows)


def _read(out: Path) -> pd.DataFrame:
    frames = [pq.read_table(p).to_pandas() for p in sorted(out.glob("*/part-*.parquet"))]
    frame = pd.concat(frames, ignore_index=True)
    return frame.sort_values(["dataset", "event"]).reset_index(drop=True)


def _cli(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr().err


def test_a_processor_from_a_file_skims_the_real_nanoaod(nano_dy_path, tmp_path, capsys):
    processor = _write_processor(tmp_path)
    fileset = tmp_path / "fileset.json"
    fileset.write_text(json.dumps({"DY": {"files": {str(nano_dy_path): "Events"},
                                          "metadata": {"process": "DY", "label": 0, "xsec_pb": 6025.2}}}))
    code, err = _cli(capsys, "skim", fileset, "--out", tmp_path / "skim", "--executor", "iterative",
                     "--processor", f"{processor}:ZMuMu", "--quiet")
    assert code == 0, err
    skim = _read(tmp_path / "skim")
    reference = independent_zmumu(str(nano_dy_path)).sort_values("event").reset_index(drop=True)
    assert len(skim) == len(reference) > 0
    np.testing.assert_array_equal(skim["event"].to_numpy(), reference["event"].to_numpy())
    np.testing.assert_allclose(skim["mu1_pt"], reference["mu1_pt"], rtol=1e-6)
    np.testing.assert_allclose(skim["m_mumu"], reference["m_mumu"], rtol=1e-5)
    np.testing.assert_array_equal(skim["nmuons"], reference["nmuons"])
    # hepprep's columns first, then the processor's, with their declared types
    schema = pq.read_schema(next((tmp_path / "skim").glob("*/part-*.parquet")))
    assert schema.names[:8] == ["run", "luminosityBlock", "event", "dataset", "process", "label",
                                "genWeight", "weight"]
    assert [str(schema.field(c).type) for c in ("mu1_pt", "nmuons")] == ["float", "int16"]
    manifest = json.loads((tmp_path / "skim" / "manifest.json").read_text())
    assert manifest["processor"]["name"] == "zmumu" and manifest["processor"]["version"] == "1"
    assert manifest["processor"]["default_features"][0] == "mu1_pt"
    cutflow = json.loads((tmp_path / "skim" / "cutflow.json").read_text())["DY"]["cuts"]
    assert list(cutflow) == ["all", "two_muons", "opposite_charge", "mass_window"]
    assert cutflow["all"]["events"] == 40 and cutflow["mass_window"]["events"] == len(reference)
    # MC weights as for any processor: xsec * lumi * genWeight / sumw
    runs_sumw = uproot.open(nano_dy_path)["Runs"]["genEventSumw_"].array(library="np")
    expected = 6025.2 * 11467.0 * skim["genWeight"].to_numpy(np.float64) / manifest["datasets"]["DY"]["sumw"]
    np.testing.assert_allclose(skim["weight"], expected, rtol=1e-12)
    assert manifest["datasets"]["DY"]["sumw"] == pytest.approx(float(np.sum(runs_sumw.astype(np.float64))))


def test_options_are_validated_and_a_bad_processor_is_one_line(nano_dy_path, tmp_path, capsys):
    processor = _write_processor(tmp_path)
    fileset = tmp_path / "fileset.json"
    fileset.write_text(json.dumps({"DY": {"files": {str(nano_dy_path): "Events"},
                                          "metadata": {"process": "DY", "label": 0, "xsec_pb": 1.0}}}))
    config = tmp_path / "analysis.toml"
    config.write_text(f'[skim]\nprocessor = "{processor}:ZMuMu"\n[skim.options]\nmuon_pt_mni = 5.0\n')
    code, err = _cli(capsys, "skim", fileset, "--out", tmp_path / "skim", "--config", config, "--quiet")
    assert code == 1 and err.count("\n") == 1, err
    assert "skim.options (zmumu): muon_pt_mni: unknown key" in err
    for spec, why in ((f"{tmp_path}/nope.py:ZMuMu", "no such file"), (f"{processor}:Nope", "has no class Nope"),
                      ("json:JSONDecoder", "is not a processors.SkimProcessor"), ("noclass", "give it as")):
        code, err = _cli(capsys, "skim", fileset, "--out", tmp_path / "skim2", "--processor", spec, "--quiet")
        assert code == 1 and err.count("\n") == 1 and why in err, (spec, err)
    assert not (tmp_path / "skim2").exists()


def test_a_bug_in_a_processor_is_one_line_naming_where(nano_dy_path, tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text(ZMUMU.replace("VERSION", "1").replace("mass = (mu1 + mu2).mass",
                                                           "mass = (mu1 + mu2).mass + events.Nope.x"))
    fileset = tmp_path / "fileset.json"
    fileset.write_text(json.dumps({"DY": {"files": {str(nano_dy_path): "Events"},
                                          "metadata": {"process": "DY", "label": 0, "xsec_pb": 1.0}}}))
    code, err = _cli(capsys, "skim", fileset, "--out", tmp_path / "skim", "--executor", "iterative",
                     "--processor", f"{broken}:ZMuMu", "--skip-bad-files", "--quiet")
    assert code == 1 and err.count("\n") == 1, err
    assert "processor zmumu raised AttributeError: no field named 'Nope'" in err
    assert "line 35 in select" in err or "broken.py:35 in select" in err, err
    assert not list((tmp_path / "skim").glob("*/part-*.parquet"))  # not a bad file to skip


@pytest.fixture(scope="module")
def zmumu_on_generated(generated_sample, tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    processor = _write_processor(root)
    # Z->mumu is the signal here: Drell-Yan labelled 1, the rest of the sample background.
    raw = json.loads(generated_sample.read_text())
    fileset = {}
    for name, entry in raw.items():
        meta = dict(entry["metadata"])
        if meta["label"] != -1:
            meta["label"] = 1 if name == "DYJetsToLL" else 0
        fileset[name] = {"files": {str((generated_sample.parent / f).resolve()): t for f, t in entry["files"].items()},
                         "metadata": meta}
    path = root / "fileset.json"
    path.write_text(json.dumps(fileset))
    config = config_from_dict({"skim": {"processor": f"{processor}:ZMuMu", "chunksize": 1500},
                               "prepare": {"bucket_rows": 2000},
                               "train": {"xgboost": {"num_boost_round": 10}}})
    summary = run_skim(path, root / "skim", config, executor="iterative", progress=False)
    return {"root": root, "processor": processor, "config": config, "summary": summary}


def test_prepare_train_and_evaluate_take_the_processors_columns(zmumu_on_generated):
    root, config = zmumu_on_generated["root"], zmumu_on_generated["config"]
    prep = root / "prepared"
    run_prepare(root / "skim", prep, config, progress=False)
    stats = json.loads((prep / "stats.json").read_text())
    assert stats["feature_order"] == ["mu1_pt", "mu2_pt", "mu1_eta", "m_mumu", "nmuons"]
    model = run_train(prep, root / "models" / "xgboost", config, model="xgboost", progress=False)
    assert json.loads((model / "model_info.json").read_text())["features"] == stats["feature_order"]
    report = run_evaluate([model], prep, root / "evaluation", config, progress=False)
    metrics = json.loads((report.parent / "metrics.json").read_text())
    assert 0.0 <= metrics["models"]["xgboost"]["roc_auc"] <= 1.0
    assert any(p.startswith("plots/feature_m_mumu") for p in metrics["plots"])


def _fingerprints(skim: Path) -> set[str]:
    return {json.loads(pq.read_metadata(p).metadata[b"hepprep.skim"])["fingerprint"]
            for p in skim.glob("*/part-*.parquet")}


def _forget_user_processors() -> None:
    for name in [n for n in sys.modules if n.startswith("hepprep_user_processor_")]:
        del sys.modules[name]


def test_a_new_version_re_runs_its_chunks(zmumu_on_generated, tmp_path):
    skim = tmp_path / "skim"
    shutil.copytree(zmumu_on_generated["root"] / "skim", skim)
    config = zmumu_on_generated["config"]
    fileset = _generated_fileset(zmumu_on_generated)
    rerun = run_skim(fileset, skim, config, executor="iterative", progress=False)
    assert rerun["chunks_run"] == 0  # same processor, same version: every part reused
    before = _fingerprints(skim)
    try:
        _write_processor(zmumu_on_generated["root"], version="2")
        _forget_user_processors()
        rerun = run_skim(fileset, skim, config, executor="iterative", progress=False)
        assert rerun["chunks_run"] == rerun["chunks"] > 0 and rerun["chunks_skipped"] == 0
        assert _fingerprints(skim).isdisjoint(before)  # no part of version 1 is left
        assert json.loads((skim / "manifest.json").read_text())["processor"]["version"] == "2"
    finally:
        _write_processor(zmumu_on_generated["root"], version="1")
        _forget_user_processors()


def _generated_fileset(zmumu_on_generated) -> Path:
    manifest = json.loads((zmumu_on_generated["root"] / "skim" / "manifest.json").read_text())
    return Path(manifest["fileset"])


def test_resume_after_sigkill_and_bad_files_as_for_di_tau(zmumu_on_generated, tmp_path):
    processor = zmumu_on_generated["processor"]
    fileset = _generated_fileset(zmumu_on_generated)
    raw = json.loads(fileset.read_text())
    bad = tmp_path / "bad.root"
    bad.write_bytes(b"root" + b"\0" * 100)
    raw["DYJetsToLL"]["files"][str(bad)] = "Events"
    for entry in raw.values():
        entry["files"] = {str((fileset.parent / f).resolve()) if not Path(f).is_absolute() else f: t
                          for f, t in entry["files"].items()}
    with_bad = tmp_path / "fileset.json"
    with_bad.write_text(json.dumps(raw))
    out = tmp_path / "skim"
    command = [sys.executable, "-m", "analysis.cli", "skim", str(with_bad), "--out", str(out), "--executor",
               "iterative", "--chunksize", "300", "--processor", f"{processor}:ZMuMu", "--skip-bad-files",
               "--quiet"]
    proc = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*/part-*.parquet"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(list(out.glob("*/part-*.parquet")))
    assert written >= 3
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and [f["status"] for f in manifest["files"] if f["path"] == str(bad)] == ["skipped"]
    # every event once: the same rows as an undisturbed run of the same chunking
    reference = tmp_path / "reference"
    subprocess.run([*command[:6], str(reference), *command[7:]], cwd=REPO, check=True, capture_output=True)
    assert _read(out)[["dataset", "event", "m_mumu"]].equals(_read(reference)[["dataset", "event", "m_mumu"]])
