"""Today's NanoAOD: v15 (no Jet_jetId, no MET_*), the Run 3 jet ID recipe, profiles as data, RNTuple.

The v15-layout file is made here from the real Run 2 fixture ``nano_dy.root`` by renaming
and dropping branches as v15 does: DeepTau 2017v2p1 bit masks become 2018v2p5-style
working-point indices (the working points are nested, so the index is the number of bits
set), ``Jet_jetId`` and ``MET_*`` go, ``PFMET_*`` holds what ``MET_*`` held and
``PuppiMET_*`` stays. Run 2 files have no constituent multiplicities, so the test writes
``Jet_chMultiplicity`` and ``Jet_neMultiplicity`` from ``Jet_nConstituents`` and the neutral
energy fraction. The expected jet counts are worked out here with numpy, from the
recipe as JME writes it, never through hepprep's function.
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
from analysis.errors import ConfigError, InputFileError
from analysis.config import SelectionConfig
from processors.profiles import detect_profile, jme_run3_jet_id

pytestmark = QUIET_COFFEA
COLLECTIONS = ("Tau", "Jet")
LOOSE = {"tau_iso": "VLoose", "tau_require_anti_lepton": False, "min_jets": 0}


def _popcount(values: ak.Array) -> ak.Array:
    flat = np.asarray(ak.flatten(values)).astype(np.uint8)
    counts = np.unpackbits(flat[:, None], axis=1).sum(axis=1).astype(np.uint8)
    return ak.unflatten(counts, ak.num(values))


def _make_layout(source: Path, target: Path, *, version: str) -> None:
    """``version`` "v15": as NanoAOD v15; "v12": Run 3 v12-v14 (Jet_jetId present but zero, MET_*)."""
    tree = uproot.open(source)["Events"]
    scalars = ["run", "luminosityBlock", "event", "genWeight", *tree.keys(filter_name="PV_*"),
               "PuppiMET_pt", "PuppiMET_phi", "MET_pt", "MET_phi"]
    flat = tree.arrays(scalars, library="np")
    out: dict = {k: v for k, v in flat.items() if not k.startswith("MET_")}
    met = "PFMET" if version == "v15" else "MET"
    out[f"{met}_pt"], out[f"{met}_phi"] = flat["MET_pt"], flat["MET_phi"]
    for name in COLLECTIONS:
        fields = {b.split("_", 1)[1]: tree[b].array() for b in tree.keys(filter_name=f"{name}_*")}
        if name == "Tau":
            for kind in ("VSjet", "VSe", "VSmu"):
                fields[f"idDeepTau2018v2p5{kind}"] = _popcount(fields.pop(f"idDeepTau2017v2p1{kind}"))
        else:
            jet_id = fields.pop("jetId")
            if version == "v12":
                fields["jetId"] = ak.zeros_like(jet_id)  # wrong in v12-v14: the recipe must ignore it
            n = fields["nConstituents"]
            neutral = ak.values_astype(np.round(n * (fields["neHEF"] + fields["neEmEF"])), np.int32)
            fields["neMultiplicity"] = ak.values_astype(neutral, np.uint8)
            fields["chMultiplicity"] = ak.values_astype(n - neutral, np.uint8)
        out[name] = ak.zip(fields)
    with uproot.recreate(target) as f:
        f.mktree("Events", {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in out.items()})
        f["Events"].extend(out)


def _fileset(folder: Path, files: dict[str, str]) -> Path:
    meta = {"process": "DY", "label": 0, "is_mc": True, "xsec_pb": 6025.2, "sumw": 1.0e6}
    path = folder / "fileset.json"
    path.write_text(json.dumps({name: {"files": {f: "Events"}, "metadata": meta} for name, f in files.items()}))
    return path


def _skim(folder: Path, files: dict[str, str], out: str = "skim", **config):
    config = config_from_dict({"skim": {"executor": "iterative", **config.pop("skim", {})},
                               "selection": {**LOOSE, **config.pop("selection", {})}, **config})
    run_skim(_fileset(folder, files), folder / out, config, progress=False)
    manifest = json.loads((folder / out / "manifest.json").read_text())
    tables = {name: pq.read_table(sorted((folder / out / name).glob("part-*.parquet"))).to_pandas()
              for name in files}
    return tables, manifest


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, nano_dy_path) -> Path:
    folder = tmp_path_factory.mktemp("nanoaod-versions")
    (folder / "run2.root").write_bytes(nano_dy_path.read_bytes())
    _make_layout(nano_dy_path, folder / "v15.root", version="v15")
    _make_layout(nano_dy_path, folder / "v12.root", version="v12")
    return folder


def _jme_tight(eta, nhf, nemf, chf, chm, nhm) -> bool:
    """JME's Run 3 tight PUPPI jet ID as the JetID13p6TeV recipe writes it, one jet."""
    a = abs(eta)
    if a <= 2.6:
        return chm > 0 and chf > 0.01 and chm + nhm > 1 and nemf < 0.9 and nhf < 0.99
    if a <= 2.7:
        return nemf < 0.99 and nhf < 0.9
    if a <= 3.0:
        return nhf < 0.99
    return nemf < 0.4 and nhm >= 2


def test_jme_run3_jet_id_on_hand_worked_jets():
    jets = [  # eta, neHEF, neEmEF, chHEF, chEmEF, muEF, chMult, neMult, tight, tight lepton veto
        (0.5, 0.10, 0.20, 0.60, 0.05, 0.00, 5, 3, True, True),       # ordinary central jet
        (0.5, 0.10, 0.20, 0.60, 0.05, 0.85, 5, 3, True, False),      # a muon inside: vetoed
        (-1.2, 0.10, 0.20, 0.60, 0.81, 0.00, 5, 3, True, False),     # an electron inside: vetoed
        (2.0, 0.10, 0.20, 0.005, 0.0, 0.0, 5, 3, False, False),      # charged hadron fraction <= 0.01
        (2.0, 0.30, 0.20, 0.50, 0.0, 0.0, 0, 4, False, False),       # no charged constituent
        (2.0, 0.30, 0.20, 0.50, 0.0, 0.0, 1, 0, False, False),       # a single constituent
        (2.6, 0.30, 0.90, 0.50, 0.0, 0.0, 3, 3, False, False),       # |eta| = 2.6 is central: NEMF < 0.9 fails
        (2.65, 0.30, 0.95, 0.0, 0.0, 0.0, 0, 2, True, True),         # 2.6-2.7: NEMF < 0.99 and NHF < 0.9
        (2.65, 0.95, 0.01, 0.0, 0.0, 0.0, 0, 2, False, False),       # 2.6-2.7: NHF 0.95 >= 0.9
        (-2.9, 0.95, 0.99, 0.0, 0.0, 0.9, 0, 1, True, True),         # 2.7-3.0: NHF < 0.99 only; no veto
        (2.9, 0.995, 0.0, 0.0, 0.0, 0.0, 0, 1, False, False),        # 2.7-3.0: NHF 0.995
        (3.5, 0.90, 0.30, 0.0, 0.0, 0.0, 0, 2, True, True),          # forward: NEMF < 0.4, two neutrals
        (3.5, 0.90, 0.30, 0.0, 0.0, 0.0, 0, 1, False, False),        # forward: one neutral
        (-4.0, 0.50, 0.45, 0.0, 0.0, 0.0, 0, 5, False, False),       # forward: NEMF 0.45
    ]
    names = ("eta", "neHEF", "neEmEF", "chHEF", "chEmEF", "muEF", "chMultiplicity", "neMultiplicity")
    records = ak.Array([[dict(zip(names, j[:8])) for j in jets[:7]], [dict(zip(names, j[:8])) for j in jets[7:]]])
    assert ak.flatten(jme_run3_jet_id(records)).tolist() == [j[8] for j in jets]
    assert ak.flatten(jme_run3_jet_id(records, lepton_veto=True)).tolist() == [j[9] for j in jets]
    # the same on flat numpy columns, as the di-tau processor passes them
    columns = {n: np.array([j[i] for j in jets]) for i, n in enumerate(names)}
    assert jme_run3_jet_id(type("Jets", (), columns)).tolist() == [j[8] for j in jets]


def _independent_njets(path: Path, rows) -> list[int]:
    """Good jets (pt > 30, |eta| < 4.7, the recipe's tight ID, dR > 0.5 from both taus) of each row."""
    tree = uproot.open(path)["Events"]
    names = ["event", *(f"Jet_{f}" for f in ("pt", "eta", "phi", "neHEF", "neEmEF", "chHEF",
                                              "chMultiplicity", "neMultiplicity"))]
    arrays = tree.arrays(names, library="np")
    where = {int(e): i for i, e in enumerate(arrays["event"])}
    counts = []
    for row in rows.itertuples():
        i = where[int(row.event)]
        n = 0
        for k in range(len(arrays["Jet_pt"][i])):
            eta, phi = float(arrays["Jet_eta"][i][k]), float(arrays["Jet_phi"][i][k])
            tight = _jme_tight(eta, *(float(arrays[f"Jet_{f}"][i][k]) for f in
                                      ("neHEF", "neEmEF", "chHEF", "chMultiplicity", "neMultiplicity")))
            clean = all(math.hypot(eta - t_eta, math.remainder(phi - t_phi, 2 * math.pi)) > 0.5
                        for t_eta, t_phi in ((row.tau1_eta, row.tau1_phi), (row.tau2_eta, row.tau2_phi)))
            n += tight and float(arrays["Jet_pt"][i][k]) > 30 and abs(eta) < 4.7 and clean
        counts.append(n)
    return counts


def test_v15_layout_jet_id_from_fractions_and_pfmet(layouts):
    tables, manifest = _skim(layouts, {"run2": "run2.root", "v15": "v15.root", "v12": "v12.root"})
    profiles = {f["dataset"]: f["profile"] for f in manifest["files"]}
    assert profiles == {"run2": "run2", "v15": "run3v15", "v12": "run3"}
    run2, v15, v12 = (tables[n].sort_values("event").reset_index(drop=True) for n in ("run2", "v15", "v12"))
    # The same taus pass: the converted DeepTau indices say what the bit masks said.
    assert len(v15) > 0 and v15["event"].tolist() == run2["event"].tolist()
    for column in ("tau1_pt", "tau2_pt", "tau1_iso", "m_vis"):
        np.testing.assert_array_equal(v15[column], run2[column])
    met = uproot.open(layouts / "v15.root")["Events"].arrays(["event", "PFMET_pt"], library="np")
    by_event = dict(zip(met["event"].tolist(), met["PFMET_pt"].tolist()))
    assert v15["met_pt"].tolist() == pytest.approx([by_event[e] for e in v15["event"]])
    # Jets: the recipe, worked out independently; v12's all-zero Jet_jetId is not used.
    assert v15["njets"].tolist() == _independent_njets(layouts / "v15.root", v15)
    assert v12["njets"].tolist() == v15["njets"].tolist()
    cutflow = json.loads((layouts / "skim" / "cutflow.json").read_text())
    assert cutflow["v15"]["cuts"] == cutflow["v12"]["cuts"]
    # Every jet of the file, not only those of the few selected events: the profile's jet ID
    # against the recipe worked out jet by jet.
    tree = uproot.open(layouts / "v15.root")["Events"]
    profile = detect_profile(tree.keys(recursive=False))
    fields = ("eta", "neHEF", "neEmEF", "chHEF", "chMultiplicity", "neMultiplicity")
    jets = ak.zip({f: tree[f"Jet_{f}"].array() for f in (*fields, "pt", "chEmEF", "muEF")})
    expected = [_jme_tight(*(float(jet[f]) for f in fields)) for jet in ak.flatten(jets)]
    selection = SelectionConfig(jet_require_puid=True)  # v15 has no pile-up ID: not applied
    assert ak.flatten(profile.jet_id_mask(jets, selection)).tolist() == expected
    assert 0 < sum(expected) < len(expected)


def test_which_missing_momentum_is_configurable(layouts):
    tables, _ = _skim(layouts, {"v15": "v15.root"}, out="puppi",
                      skim={"input_profiles": {"run3v15": {"met": "PuppiMET"}}})
    met = uproot.open(layouts / "v15.root")["Events"].arrays(["event", "PuppiMET_pt"], library="np")
    by_event = dict(zip(met["event"].tolist(), met["PuppiMET_pt"].tolist()))
    table = tables["v15"]
    assert len(table) > 0 and table["met_pt"].tolist() == pytest.approx([by_event[e] for e in table["event"]])


def test_a_profile_from_the_config_and_its_errors(layouts, tmp_path):
    # A private dialect: the v15 file's taus read with a relative isolation it does not have
    # is an error naming the branch; a typo in a key is a config error naming it.
    custom = {"mynano": {"requires": ["PFMET_pt"], "tau_id": "index",
                         "tau_id_branches": {k: f"Tau_idDeepTau2018v2p5{k}" for k in ("VSjet", "VSe", "VSmu")},
                         "tau_isolation": "Tau_myRelIso", "jet_id": "none", "jet_puid": "none",
                         "btag": "Jet_btagDeepFlavB", "met": "PFMET"}}
    (tmp_path / "v15.root").write_bytes((layouts / "v15.root").read_bytes())
    with pytest.raises(InputFileError, match=r"v15\.root: missing branch Tau_myRelIso \(input profile 'mynano'\)"):
        _skim(tmp_path, {"v15": "v15.root"}, skim={"input_profiles": custom})
    custom["mynano"]["tau_isolation"] = ["Tau_chargedIso", "Tau_neutralIso"]
    tables, manifest = _skim(tmp_path, {"v15": "v15.root"}, out="custom", skim={"input_profiles": custom})
    assert manifest["files"][0]["profile"] == "mynano" and len(tables["v15"]) > 0
    with pytest.raises(ConfigError, match=r"skim\.input_profiles\.mynano\.metx: unknown key"):
        _skim(tmp_path, {"v15": "v15.root"}, out="bad", skim={"input_profiles": {"mynano": {
            **custom["mynano"], "metx": "PFMET"}}})


def test_v15_without_its_missing_momentum_is_one_line(layouts, tmp_path):
    tree = uproot.open(layouts / "v15.root")["Events"]
    keep = [k for k in tree.keys(recursive=False) if not k.startswith("PFMET")]
    with uproot.recreate(tmp_path / "nomet.root") as f:
        data = {k: tree[k].array() for k in keep if not k.startswith(("Tau_", "Jet_"))}
        for name in COLLECTIONS:
            data.pop(f"n{name}")
            data[name] = ak.zip({b.split("_", 1)[1]: tree[b].array() for b in keep if b.startswith(f"{name}_")})
        f.mktree("Events", {k: v.type for k, v in data.items()})
        f["Events"].extend(data)
    with pytest.raises(InputFileError, match=r"nomet\.root: missing branches PFMET_pt, PFMET_phi "
                                             r"\(input profile 'run3v15'\)"):
        _skim(tmp_path, {"v15": "nomet.root"})


# (mu-tau_h reads the same branches through the same machinery; its RNTuple run costs 30 s)
@pytest.mark.parametrize("processor", ["processors.ditau:DiTauProcessor", "zmumu"])
def test_rntuple_and_ttree_give_identical_rows_and_cutflows(tmp_path, cms_fixtures, processor):
    from test_plugins import _write_processor

    options = {}
    if processor == "zmumu":
        processor = f"{_write_processor(tmp_path)}:ZMuMu"
    (tmp_path / "ttree.root").write_bytes(cms_fixtures.nano_dy.read_bytes())
    (tmp_path / "rntuple.root").write_bytes(cms_fixtures.nano_dy_rntuple.read_bytes())
    assert uproot.open(tmp_path / "rntuple.root").classnames()["Events;1"] == "ROOT::RNTuple"
    tables, manifest = _skim(tmp_path, {"ttree": "ttree.root", "rntuple": "rntuple.root"},
                             skim={"processor": processor, "options": options})
    ttree, rntuple = (tables[n].drop(columns="dataset") for n in ("ttree", "rntuple"))
    assert len(ttree) > 0
    assert ttree.columns.tolist() == rntuple.columns.tolist()
    assert ttree.equals(rntuple)
    cutflow = json.loads((tmp_path / "skim" / "cutflow.json").read_text())
    assert cutflow["ttree"]["cuts"] == cutflow["rntuple"]["cuts"]
    assert {f["dataset"]: f["entries"] for f in manifest["files"]} == {"ttree": 40, "rntuple": 40}
