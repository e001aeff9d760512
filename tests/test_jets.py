"""Jet-level datasets on real PFNano: one row per jet, its constituents as lists, checked against plain uproot.

``../shared/fixtures/pfnano.root`` (10 QCD events) is skimmed with ``hepprep skim --processor
processors.jets:JetProcessor`` (AK4 jets) and with ``[skim.options] collection = "FatJet"``
(AK8). Every jet's row is compared with an independent reconstruction written here with
uproot and numpy only (no hepprep import): the jets passing the cuts, their constituents
found by following ``JetPFCands_jetIdx`` / ``JetPFCands_pFCandsIdx``, ordered by decreasing
pt, every per-constituent feature by its documented formula, the secondary vertices, the
truth and the energy-scale target.

Four-vector closure: the constituents written for a jet (pt, eta = jet eta + deta, phi =
jet phi + dphi, E = exp(loge)) add up to the jet's *uncorrected* four-vector, pt and mass
times (1 - rawFactor); the AK8 (PUPPI) constituents PUPPI-weighted, the AK4 (CHS) ones not.
It holds to ``PT_TOL`` = ``E_TOL`` = 0.5 % in pt and energy, ``MASS_TOL`` = 1 % in mass and
``AXIS_TOL`` = 0.002 in Delta R of the axes; the file gives at most 0.08 % (AK4) and 0.26 %
(AK8) in pt, energy and mass, and 0.0003 in the axes. Not exactly: NanoAOD stores the candidates' and the jets' kinematics (and
rawFactor) with a truncated float mantissa (about 0.1 % each), and the jet's energy
correction factor is itself rounded. Images: each jet's pixel sums equal the pt of its
constituents inside the 0.8 x 0.8 window, channel by channel, rotated or not.

Bad input: a file without constituent branches and an index out of range are one-line
errors naming the file; a jet with no constituents is a row with empty lists, counted in
the manifest (``jets_without_constituents``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import awkward as ak
import numpy as np
import pyarrow.parquet as pq
import pytest
import uproot

from _skim_helpers import QUIET_COFFEA
from analysis import config_from_dict, run_skim
from analysis.cli import main
from analysis.core.jet_images import DEFAULT_CHANNELS, jet_images

pytestmark = QUIET_COFFEA
PROCESSOR = "processors.jets:JetProcessor"
PT_TOL, E_TOL, MASS_TOL, AXIS_TOL = 0.005, 0.005, 0.01, 0.002
CAND = ("pt", "eta", "phi", "mass", "charge", "pdgId", "d0", "d0Err", "dz", "dzErr", "puppiWeight")
SV = {"pt": "pt", "mass": "mass", "ntracks": "ntracks", "normchi2": "normchi2", "dxy": "dxy", "dxysig": "dxysig",
      "d3d": "d3d", "d3dsig": "d3dsig", "costhetasvpv": "costhetasvpv", "dphi": "phirel", "ptrel": "ptrel",
      "erel": "enration"}
CLASS = {211: 0, 130: 1, 22: 2, 11: 3, 13: 4, 1: 1, 2: 2}  # HF hadrons as neutral hadrons, HF EM as photons
AK4 = {"collection": "Jet", "links": "JetPFCands", "svs": "JetSVs", "pt_min": 20.0, "weighted": False}
AK8 = {"collection": "FatJet", "links": "FatJetPFCands", "svs": "FatJetSVs", "pt_min": 170.0, "weighted": True}
ETA_MAX = 2.5


def _fileset(folder: Path, path: Path, *, is_mc: bool = True) -> Path:
    meta = ({"process": "QCD", "label": 0, "is_mc": True, "xsec_pb": 1.0, "sumw": 10.0} if is_mc
            else {"process": "data", "label": -1, "is_mc": False})
    fileset = folder / f"fileset-{path.stem}-{is_mc}.json"
    fileset.write_text(json.dumps({"QCD" if is_mc else "JetHT": {"files": {str(path): "Events"}, "metadata": meta}}))
    return fileset


def _read(out: Path) -> dict:
    return pq.read_table(sorted(out.glob("*/part-*.parquet"))).to_pydict()


def _cli(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr().err


def _wrap(x):
    return (np.asarray(x) + np.pi) % (2 * np.pi) - np.pi


def independent_jets(path: Path, spec: dict) -> list[dict]:
    """Every jet passing the cuts, with its lists, event by event, from plain uproot + numpy."""
    tree = uproot.open(path)["Events"]
    a = tree.arrays(library="np")
    coll, links, svs = spec["collection"], spec["links"], spec["svs"]
    rows = []
    for i in range(tree.num_entries):
        for j in range(len(a[f"{coll}_pt"][i])):
            pt, eta, phi, m = (float(a[f"{coll}_{v}"][i][j]) for v in ("pt", "eta", "phi", "mass"))
            if not (pt > spec["pt_min"] and abs(eta) < ETA_MAX):
                continue
            jet_e = math.sqrt((pt * math.cosh(eta)) ** 2 + m * m)
            mine = [int(c) for k, c in enumerate(a[f"{links}_pFCandsIdx"][i]) if a[f"{links}_jetIdx"][i][k] == j]
            c = {v: a[f"PFCands_{v}"][i][mine].astype(np.float64) for v in CAND}
            w = c["puppiWeight"] if spec["weighted"] else np.ones(len(mine))
            order = sorted(range(len(mine)), key=lambda k: -(c["pt"][k] * w[k]))  # stable: link order on ties
            c = {v: x[order] for v, x in c.items()}
            w = w[order]
            energy = np.sqrt((c["pt"] * np.cosh(c["eta"])) ** 2 + c["mass"] ** 2) * w
            deta, dphi = c["eta"] - eta, _wrap(c["phi"] - phi)
            track_d0, track_dz = c["d0Err"] > 0, c["dzErr"] > 0
            row = {"event": int(a["event"][i]), "jet_index": j, "jet_pt": pt, "jet_eta": eta, "jet_phi": phi,
                   "jet_mass": m, "jet_area": float(a[f"{coll}_area"][i][j]), "jet_ncand": len(mine),
                   "cand_pt": c["pt"] * w, "cand_deta": deta, "cand_dphi": dphi, "cand_logpt": np.log(c["pt"] * w),
                   "cand_loge": np.log(energy), "cand_ptrel": c["pt"] * w / pt, "cand_erel": energy / jet_e,
                   "cand_dr": np.hypot(deta, dphi), "cand_charge": c["charge"],
                   "cand_class": np.array([CLASS.get(abs(int(p)), -1) for p in c["pdgId"]], dtype=float),
                   "cand_d0": np.where(track_d0, c["d0"], 0.0), "cand_d0sig": np.where(track_d0, c["d0"] / c["d0Err"], 0.0),
                   "cand_dz": np.where(track_dz, c["dz"], 0.0), "cand_dzsig": np.where(track_dz, c["dz"] / c["dzErr"], 0.0),
                   "cand_puppiw": c["puppiWeight"]}
            mine_sv = [k for k, jj in enumerate(a[f"{svs}_jetIdx"][i]) if jj == j]
            mine_sv = sorted(mine_sv, key=lambda k: -float(a[f"{svs}_dxysig"][i][k]))
            row.update({f"sv_{name}": a[f"{svs}_{f}"][i][mine_sv].astype(np.float64) for name, f in SV.items()})
            row["jet_nsv"] = len(mine_sv)
            gen = {"Jet": ("genJetIdx", "GenJet"), "FatJet": ("genJetAK8Idx", "GenJetAK8")}[coll]
            g = int(a[f"{coll}_{gen[0]}"][i][j])
            row["jes_target"] = float(a[f"{gen[1]}_pt"][i][g]) / pt if g >= 0 else math.nan
            row["jet_hadron_flavour"] = int(a[f"{coll}_hadronFlavour"][i][j])
            if coll == "Jet":
                row["jet_parton_flavour"] = int(a["Jet_partonFlavour"][i][j])
                row["jet_label"] = {5: 2, 4: 1}.get(row["jet_hadron_flavour"], 0)
            else:
                t1, t2, t3 = (float(a[f"FatJet_tau{k}"][i][j]) for k in (1, 2, 3))
                row.update(jet_msoftdrop=float(a["FatJet_msoftdrop"][i][j]), jet_tau21=t2 / t1, jet_tau32=t3 / t2,
                           jet_parton_flavour=-99, jet_label=0)  # a QCD file: no t, W, Z or H (checked below)
                subjets = [int(a[f"FatJet_subJetIdx{k}"][i][j]) for k in (1, 2)]
                subjets = [s for s in subjets if s >= 0]
                lead = max(subjets, key=lambda s: float(a["SubJet_pt"][i][s]))
                row["jet_sj1_deta"] = float(a["SubJet_eta"][i][lead]) - eta
                row["jet_sj1_dphi"] = float(_wrap(float(a["SubJet_phi"][i][lead]) - phi))
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def skims(cms_fixtures, tmp_path_factory):
    """The PFNano fixture skimmed: AK4 through the command line, AK8 through run_skim and [skim.options]."""
    root = tmp_path_factory.mktemp("jets")
    fileset = _fileset(root, cms_fixtures.pfnano)
    main(["skim", str(fileset), "--out", str(root / "ak4"), "--processor", PROCESSOR, "--executor", "iterative",
          "--quiet"])
    config = config_from_dict({"skim": {"processor": PROCESSOR, "executor": "iterative",
                                        "options": {"collection": "FatJet", "pt_min": AK8["pt_min"]}}})
    run_skim(fileset, root / "ak8", config, progress=False)
    return {"Jet": root / "ak4", "FatJet": root / "ak8"}


def _rows(out: Path) -> list[dict]:
    table = _read(out)
    rows = [{k: v[n] for k, v in table.items()} for n in range(len(table["event"]))]
    return sorted(rows, key=lambda r: (r["event"], r["jet_index"]))


@pytest.mark.parametrize("spec", [AK4, AK8], ids=["AK4", "AK8"])
def test_every_jets_constituents_equal_an_independent_reconstruction(skims, cms_fixtures, spec):
    skim = _rows(skims[spec["collection"]])
    reference = sorted(independent_jets(cms_fixtures.pfnano, spec), key=lambda r: (r["event"], r["jet_index"]))
    assert len(skim) == len(reference) > 10
    assert [(r["event"], r["jet_index"]) for r in skim] == [(r["event"], r["jet_index"]) for r in reference]
    for got, want in zip(skim, reference):
        for name, value in want.items():
            if isinstance(value, np.ndarray):
                assert len(got[name]) == len(value), (name, got["event"], got["jet_index"])
                np.testing.assert_allclose(np.asarray(got[name], dtype=np.float64), value.astype(np.float32),
                                           rtol=1e-6, atol=1e-7, err_msg=name)
            elif isinstance(value, float):
                np.testing.assert_allclose(got[name], np.float32(value), rtol=1e-6, err_msg=name)
            else:
                assert got[name] == value, (name, got["event"], got["jet_index"])
    assert sum(r["jet_ncand"] for r in skim) > 20 * len(skim) and sum(r["jet_nsv"] for r in skim) > 0
    gen_pdg = np.abs(np.concatenate(uproot.open(cms_fixtures.pfnano)["Events"]["GenPart_pdgId"].array(library="np")))
    assert not np.isin(gen_pdg, (6, 23, 24, 25)).any()  # why every AK8 label is QCD here


def test_ak4_constituent_counts_are_the_jets_own(skims, cms_fixtures):
    a = uproot.open(cms_fixtures.pfnano)["Events"].arrays(["event", "Jet_nConstituents"], library="np")
    n_const = {int(e): n for e, n in zip(a["event"], a["Jet_nConstituents"])}
    assert all(r["jet_ncand"] == n_const[r["event"]][r["jet_index"]] for r in _rows(skims["Jet"]))


@pytest.mark.parametrize("spec", [AK4, AK8], ids=["AK4", "AK8"])
def test_the_constituents_add_up_to_the_uncorrected_jet(skims, cms_fixtures, spec):
    coll = spec["collection"]
    a = uproot.open(cms_fixtures.pfnano)["Events"].arrays(["event", f"{coll}_rawFactor"], library="np")
    raw = {int(e): f for e, f in zip(a["event"], a[f"{coll}_rawFactor"])}
    worst = np.zeros(4)
    for r in _rows(skims[coll]):
        pt, deta, dphi = (np.asarray(r[f"cand_{v}"], dtype=np.float64) for v in ("pt", "deta", "dphi"))
        eta, phi, energy = r["jet_eta"] + deta, r["jet_phi"] + dphi, np.exp(np.asarray(r["cand_loge"], np.float64))
        px, py, pz, e = (pt * np.cos(phi)).sum(), (pt * np.sin(phi)).sum(), (pt * np.sinh(eta)).sum(), energy.sum()
        scale = 1.0 - float(raw[r["event"]][r["jet_index"]])
        jet_pt, jet_m = r["jet_pt"] * scale, r["jet_mass"] * scale
        jet_e = math.sqrt((jet_pt * math.cosh(r["jet_eta"])) ** 2 + jet_m**2)
        sum_pt = math.hypot(px, py)
        sum_m = math.sqrt(max(e * e - px * px - py * py - pz * pz, 0.0))
        axis = math.hypot(math.asinh(pz / sum_pt) - r["jet_eta"], float(_wrap(math.atan2(py, px) - r["jet_phi"])))
        worst = np.maximum(worst, [abs(sum_pt / jet_pt - 1), abs(e / jet_e - 1), abs(sum_m / jet_m - 1), axis])
    assert worst[0] < PT_TOL and worst[1] < E_TOL and worst[2] < MASS_TOL and worst[3] < AXIS_TOL, worst
    assert worst[0] > 1e-5  # not trivially exact: the file's rounding is what the tolerance is for


@pytest.mark.parametrize("spec", [AK4, AK8], ids=["AK4", "AK8"])
def test_image_pixel_sums_are_the_constituents_pt_inside_the_window(skims, spec):
    table = pq.read_table(sorted(skims[spec["collection"]].glob("*/part-*.parquet")))
    columns = [table.column(c) for c in ("cand_deta", "cand_dphi", "cand_pt", "cand_class")]
    rotate = (np.stack([table.column("jet_sj1_deta").to_numpy(), table.column("jet_sj1_dphi").to_numpy()], axis=1)
              if spec["collection"] == "FatJet" else None)
    for rotate_to in (None, rotate) if rotate is not None else (None,):
        images = jet_images(*columns, rotate_to=rotate_to)
        assert images.shape == (table.num_rows, len(DEFAULT_CHANNELS), 40, 40)
        for n in range(table.num_rows):
            x, y, pt, cls = (np.asarray(c[n].as_py(), dtype=np.float64) for c in columns)
            if rotate_to is not None:  # rotate as complex numbers: the direction d to i|d|
                d = complex(*rotate_to[n])
                p = (x + 1j * y) * (1j * d.conjugate() / abs(d))
                x, y = p.real, p.imag
            inside = (x >= -0.4) & (x < 0.4) & (y >= -0.4) & (y < 0.4)
            for k, classes in enumerate(DEFAULT_CHANNELS.values()):
                want = pt[inside & np.isin(cls, classes)].sum()
                np.testing.assert_allclose(images[n, k].sum(dtype=np.float64), want, rtol=1e-5, atol=1e-3)
        assert 0 < images[:, 0].sum() < sum(np.sum(v) for v in columns[2].to_pylist())  # some pt falls outside


def test_the_cutflow_counts_events_and_each_jet_carries_its_events_weight(skims):
    out = skims["Jet"]
    cutflow = json.loads((out / "cutflow.json").read_text())["QCD"]["cuts"]
    table = _read(out)
    assert list(cutflow) == ["all", "jet"] and cutflow["jet"]["events"] == len(set(table["event"])) == 10
    weights = {}
    for event, weight in zip(table["event"], table["weight"]):
        assert weights.setdefault(event, weight) == weight
    assert math.fsum(weights.values()) == pytest.approx(cutflow["jet"]["sum_weight"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["processor"]["name"] == "JetProcessor"
    assert manifest["files"][0]["chunks"][0]["rows"] == len(table["event"])
    assert manifest["datasets"]["QCD"]["counts"] == {"jets_without_constituents": 0}


@pytest.mark.parametrize("executor", ["futures", "dask-awkward"])
def test_every_executor_writes_the_same_jets(skims, cms_fixtures, tmp_path, executor):
    config = config_from_dict({"skim": {"processor": PROCESSOR, "executor": executor, "workers": 2, "chunksize": 4}})
    run_skim(_fileset(tmp_path, cms_fixtures.pfnano), tmp_path / "skim", config, progress=False)
    got, want = _rows(tmp_path / "skim"), _rows(skims["Jet"])
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert {k: v for k, v in a.items() if v == v} == {k: v for k, v in b.items() if v == v}  # NaN != NaN


def test_data_has_no_truth(cms_fixtures, tmp_path):
    run_skim(_fileset(tmp_path, cms_fixtures.pfnano, is_mc=False), tmp_path / "skim",
             config_from_dict({"skim": {"processor": PROCESSOR, "executor": "iterative"}}), progress=False)
    table = _read(tmp_path / "skim")
    assert set(table["jet_label"]) == {-1} and set(table["label"]) == {-1}
    assert set(table["jet_hadron_flavour"]) == set(table["jet_parton_flavour"]) == {-99}
    assert all(math.isnan(v) for v in table["jes_target"])


# -- bad input ---------------------------------------------------------------------------------------------------

def _edited_pfnano(source: Path, target: Path, edit) -> Path:
    """The AK4 branches of ``source`` rewritten to ``target`` after ``edit(collections)`` (awkward, by name)."""
    tree = uproot.open(source)["Events"]
    fields = {"Jet": ("pt", "eta", "phi", "mass", "area", "hadronFlavour", "partonFlavour", "genJetIdx"),
              "PFCands": CAND, "JetPFCands": ("jetIdx", "pFCandsIdx"), "JetSVs": (*SV.values(), "jetIdx"),
              "GenJet": ("pt", "eta", "phi", "mass")}
    collections = {name: {f: tree[f"{name}_{f}"].array() for f in fs} for name, fs in fields.items()}
    edit(collections)
    out = {k: tree[k].array(library="np") for k in ("run", "luminosityBlock", "event", "genWeight")}
    out.update({name: ak.zip(c) for name, c in collections.items()})
    with uproot.recreate(target) as f:
        f.mktree("Events", {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in out.items()})
        f["Events"].extend(out)
    return target


def _set(array: ak.Array, event: int, k: int, value: int) -> ak.Array:
    lists = array.tolist()
    lists[event][k] = value
    return ak.values_astype(ak.Array(lists), np.int32)


def test_a_file_without_constituents_is_one_line(nano_dy_path, tmp_path, capsys):
    code, err = _cli(capsys, "skim", _fileset(tmp_path, nano_dy_path), "--out", tmp_path / "skim",
                     "--processor", PROCESSOR, "--quiet")
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"hepprep: error: {nano_dy_path}: missing constituent branches PFCands_pt, ")
    assert "JetProcessor reads PFNano's PFCands and JetPFCands (is this a PFNano file?)" in err


@pytest.mark.parametrize(("branch", "event", "k", "value", "why"), [
    ("pFCandsIdx", 3, 5, 5000, "JetPFCands_pFCandsIdx = 5000 at entry 3 is out of range (the entry has 1344 PFCands)"),
    ("jetIdx", 0, 0, 99, "JetPFCands_jetIdx = 99 at entry 0 is out of range (the entry has 8 Jets)"),
    ("pFCandsIdx", 1, 0, -1, "JetPFCands_pFCandsIdx = -1 at entry 1 is out of range"),
])
def test_a_constituent_index_out_of_range_is_one_line(cms_fixtures, tmp_path, capsys, branch, event, k, value, why):
    def edit(c):
        c["JetPFCands"][branch] = _set(c["JetPFCands"][branch], event, k, value)

    bad = _edited_pfnano(cms_fixtures.pfnano, tmp_path / "bad.root", edit)
    code, err = _cli(capsys, "skim", _fileset(tmp_path, bad), "--out", tmp_path / "skim", "--processor", PROCESSOR,
                     "--executor", "iterative", "--quiet")
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"hepprep: error: {bad}: {why}"), err
    assert not list((tmp_path / "skim").glob("*/part-*.parquet"))
    code, err = _cli(capsys, "skim", _fileset(tmp_path, bad), "--out", tmp_path / "skim", "--processor", PROCESSOR,
                     "--executor", "iterative", "--skip-bad-files", "--quiet")
    manifest = json.loads((tmp_path / "skim" / "manifest.json").read_text())
    assert manifest["files"][0]["status"] == "skipped" and why in manifest["files"][0]["error"]


def test_a_jet_without_constituents_is_a_row_with_empty_lists_counted_in_the_manifest(cms_fixtures, tmp_path):
    def edit(c):  # drop every constituent of jet 0 of entry 0
        links = c["JetPFCands"]
        keep = ~((links["jetIdx"] == 0) & (ak.local_index(links["jetIdx"], axis=0) == 0))
        for f in links:
            links[f] = links[f][keep]

    edited = _edited_pfnano(cms_fixtures.pfnano, tmp_path / "empty.root", edit)
    run_skim(_fileset(tmp_path, edited), tmp_path / "skim",
             config_from_dict({"skim": {"processor": PROCESSOR, "executor": "iterative"}}), progress=False)
    rows = _rows(tmp_path / "skim")
    first = [r for r in rows if r["event"] == 1735802 and r["jet_index"] == 0]
    assert len(first) == 1 and first[0]["jet_ncand"] == 0 and first[0]["cand_pt"] == [] == first[0]["cand_class"]
    assert first[0]["jet_pt"] == 1676.0 and first[0]["jet_nsv"] == 0
    assert sum(r["jet_ncand"] == 0 for r in rows) == 1
    manifest = json.loads((tmp_path / "skim" / "manifest.json").read_text())
    assert manifest["datasets"]["QCD"]["counts"] == {"jets_without_constituents": 1}
    assert manifest["files"][0]["chunks"][0]["counts"] == {"jets_without_constituents": 1}
    table = pq.read_table(sorted((tmp_path / "skim").glob("*/part-*.parquet")))
    images = jet_images(*(table.column(c) for c in ("cand_deta", "cand_dphi", "cand_pt", "cand_class")))
    empty = table.column("jet_ncand").to_numpy() == 0
    assert images[empty].sum() == 0 and images[~empty].sum(axis=(1, 2, 3)).min() > 0
