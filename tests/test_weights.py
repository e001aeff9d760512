"""MC weights from any branches: the dataset's weight product, its scale, and sumw from the Runs tree.

Hand-made NanoAOD-like files (written here with uproot, every value known) and the real
``nano_dy.root``, whose ``Runs`` tree carries ``genEventSumw_`` (the older NanoAOD name):
the expected weights are worked out with numpy from the same branches, never through
hepprep's code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import uproot
from _skim_helpers import QUIET_COFFEA

from analysis import config_from_dict, run_skim
from analysis.cli import main
from analysis.errors import ConfigError, InputFileError, StageInputError

pytestmark = QUIET_COFFEA
LUMI = 11_467.0

# Every event selected: the weights, not a selection, are under test.
ALL_EVENTS = '''
from processors import SkimProcessor


class AllEvents(SkimProcessor):
    name = "all_events"
    columns = {"met_pt": "float32"}
    default_features = ("met_pt",)
    branches = ("MET_pt", "MET_phi")  # NanoAODSchema builds MET from both

    def select(self, events, cutflow):
        return {"met_pt": events.MET.pt}
'''


def _processor(folder: Path) -> str:
    path = folder / "all_events.py"
    path.write_text(ALL_EVENTS)
    return f"{path}:AllEvents"


def _events(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"run": np.full(n, 1, np.uint32), "luminosityBlock": np.arange(n, dtype=np.uint32) // 10 + 1,
            "event": np.arange(seed * 1000, seed * 1000 + n, dtype=np.uint64),
            "MET_pt": rng.uniform(5, 80, n).astype(np.float32),
            "MET_phi": rng.uniform(-3, 3, n).astype(np.float32),
            "genWeight": rng.choice([-2.5, 2.5, 3.0], n).astype(np.float32),
            "puWeight": rng.uniform(0.6, 1.4, n).astype(np.float32),
            "L1PreFiringWeight_Nom": rng.uniform(0.95, 1.0, n).astype(np.float32),
            "XSWeight": np.full(n, 0.0123, np.float32), "SFweight2l": rng.uniform(0.9, 1.1, n).astype(np.float32)}


def _write(path: Path, n: int, seed: int, runs: dict[str, np.ndarray] | None = None,
           drop: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    events = {k: v for k, v in _events(n, seed).items() if k not in drop}
    with uproot.recreate(path) as f:
        # TTrees, as NanoAOD files are (assigning a dict writes an RNTuple in recent uproot)
        for name, branches in (("Events", events), ("Runs", runs)):
            if branches is not None:
                f.mktree(name, {k: v.dtype for k, v in branches.items()})
                f[name].extend(branches)
    return events


def _fileset(tmp_path: Path, files: list[str], **metadata) -> Path:
    meta = {"process": "DY", "label": 0, "is_mc": True, "xsec_pb": 6025.2, **metadata}
    path = tmp_path / "fileset.json"
    path.write_text(json.dumps({"DY": {"files": {f: "Events" for f in files}, "metadata": meta}}))
    return path


def _config(processor: str, **skim):
    return config_from_dict({"skim": {"executor": "iterative", "processor": processor, **skim}})


def _skim(tmp_path: Path, fileset: Path, config, out: str = "skim"):
    run_skim(fileset, tmp_path / out, config, progress=False)
    table = pq.read_table(sorted((tmp_path / out / "DY").glob("part-*.parquet"))).to_pandas()
    manifest = json.loads((tmp_path / out / "manifest.json").read_text())
    return table.sort_values("event").reset_index(drop=True), manifest


def _sorted(events: dict[str, np.ndarray], *names: str) -> list[np.ndarray]:
    order = np.argsort(events["event"])
    return [events[n][order].astype(np.float64) for n in names]


# Two worker processes check the files there (analysis.skim.checks): the same sums and weights.
EXECUTORS = [{"executor": "iterative"}, {"executor": "futures", "workers": 2}]


@pytest.mark.parametrize("skim", EXECUTORS, ids=lambda s: s["executor"])
def test_weight_product_and_scale_normalised_by_the_runs_sum(tmp_path, skim):
    runs = {"run": np.array([1, 2], np.uint32), "genEventSumw": np.array([4.0e5, 2.5e5])}
    events = _write(tmp_path / "a.root", 60, seed=1, runs=runs)
    fileset = _fileset(tmp_path, ["a.root"], weight="genWeight * puWeight * L1PreFiringWeight_Nom",
                       weight_scale=1.25)
    table, manifest = _skim(tmp_path, fileset, _config(_processor(tmp_path), **skim))
    g, pu, l1 = _sorted(events, "genWeight", "puWeight", "L1PreFiringWeight_Nom")
    sumw = 4.0e5 + 2.5e5  # both runs of the Runs tree, not the 60 events'
    assert manifest["datasets"]["DY"]["sumw"] == sumw
    assert manifest["datasets"]["DY"]["sumw_source"] == "computed from Runs.genEventSumw"
    assert manifest["datasets"]["DY"]["weight"] == ["genWeight", "puWeight", "L1PreFiringWeight_Nom"]
    assert manifest["datasets"]["DY"]["weight_scale"] == 1.25
    np.testing.assert_allclose(table["weight"], 6025.2 * LUMI * 1.25 * g * pu * l1 / sumw, rtol=1e-12)
    np.testing.assert_array_equal(table["genWeight"], g.astype(np.float32))
    cutflow = json.loads((tmp_path / "skim" / "cutflow.json").read_text())
    expected = 6025.2 * LUMI * 1.25 * g * pu * l1 / sumw
    assert cutflow["DY"]["cuts"]["all"]["sum_weight"] == pytest.approx(math.fsum(expected.tolist()), rel=1e-12)

    # another weight re-skims the chunks (the parts' fingerprint holds it), never reuses them
    fileset = _fileset(tmp_path, ["a.root"], weight="genWeight * puWeight", weight_scale=1.25)
    table, _ = _skim(tmp_path, fileset, _config(_processor(tmp_path)))
    np.testing.assert_allclose(table["weight"], 6025.2 * LUMI * 1.25 * g * pu / sumw, rtol=1e-12)


@pytest.mark.parametrize("skim", EXECUTORS, ids=lambda s: s["executor"])
def test_sumw_from_the_events_without_a_runs_tree_and_from_the_metadata(tmp_path, skim):
    a = _write(tmp_path / "a.root", 40, seed=2)
    b = _write(tmp_path / "b.root", 30, seed=3)
    processor = _processor(tmp_path)
    table, manifest = _skim(tmp_path, _fileset(tmp_path, ["a.root", "b.root"]), _config(processor, **skim))
    sumw = math.fsum(np.concatenate([a["genWeight"], b["genWeight"]]).astype(np.float64).tolist())
    assert manifest["datasets"]["DY"]["sumw"] == sumw
    assert manifest["datasets"]["DY"]["sumw_source"] == "computed from Events.genWeight"
    g = np.sort(np.concatenate([a["event"], b["event"]]))
    assert table["event"].tolist() == g.tolist()
    # default weight: genWeight alone
    genweight = table["genWeight"].to_numpy(np.float64)
    np.testing.assert_allclose(table["weight"], 6025.2 * LUMI * genweight / sumw, rtol=1e-12)

    table, manifest = _skim(tmp_path, _fileset(tmp_path, ["a.root", "b.root"], sumw=1.0e6),
                            _config(processor), out="skim_meta")
    assert manifest["datasets"]["DY"]["sumw_source"] == "metadata"
    np.testing.assert_allclose(table["weight"], 6025.2 * LUMI * genweight / 1.0e6, rtol=1e-12)


def test_private_ntuple_weights_from_the_config(tmp_path):
    """The ``XSWeight * SFweight2l`` style: the weight is already per pb, so xsec and sumw are 1."""
    events = _write(tmp_path / "a.root", 25, seed=4, drop=("genWeight",))
    fileset = _fileset(tmp_path, ["a.root"], xsec_pb=1.0, sumw=1.0)
    processor = _processor(tmp_path)
    config = config_from_dict({"skim": {"executor": "iterative", "processor": processor,
                                        "weight": "genWeight * puWeight"},
                               "samples": {"DY": {"process": "DY", "label": 0, "xsec_pb": 1.0,
                                                  "weight": "XSWeight * SFweight2l", "weight_scale": 2.0},
                                           "sig": {"process": "sig", "label": 1, "xsec_pb": 1.0}}})
    table, manifest = _skim(tmp_path, fileset, config)
    xs, sf = _sorted(events, "XSWeight", "SFweight2l")
    # the sample's weight wins over [skim] weight (whose genWeight these files lack)
    assert manifest["datasets"]["DY"]["weight"] == ["XSWeight", "SFweight2l"]
    np.testing.assert_allclose(table["weight"], LUMI * 2.0 * xs * sf, rtol=1e-12)
    assert (table["genWeight"] == 1.0).all()


def test_runs_sumw_on_real_nanoaod(tmp_path, nano_dy_path):
    """nano_dy.root keeps the Runs tree of the whole original file: 40 events, sumw of 850,098."""
    with uproot.open(nano_dy_path) as f:
        runs_sumw = math.fsum(f["Runs"]["genEventSumw_"].array(library="np").tolist())
        events = f["Events"].arrays(["event", "genWeight", "btagWeight_DeepCSVB"], library="np")
    assert runs_sumw > 1e4 * float(np.sum(events["genWeight"]))  # far from the 40 events' own sum
    local_copy = tmp_path / "nano_dy.root"
    local_copy.write_bytes(nano_dy_path.read_bytes())
    fileset = _fileset(tmp_path, ["nano_dy.root"], weight=["genWeight", "btagWeight_DeepCSVB"])
    table, manifest = _skim(tmp_path, fileset, _config(_processor(tmp_path)))
    assert manifest["datasets"]["DY"]["sumw"] == runs_sumw
    assert manifest["datasets"]["DY"]["sumw_source"] == "computed from Runs.genEventSumw_"
    order = np.argsort(events["event"])
    expected = (6025.2 * LUMI * events["genWeight"][order].astype(np.float64)
                * events["btagWeight_DeepCSVB"][order].astype(np.float64) / runs_sumw)
    assert table["event"].tolist() == events["event"][order].tolist()
    np.testing.assert_allclose(table["weight"], expected, rtol=1e-12)

    # a branch that is not one number per event cannot be a weight factor
    fileset = _fileset(tmp_path, ["nano_dy.root"], weight="genWeight * LHEScaleWeight")
    with pytest.raises(InputFileError, match="weight branch LHEScaleWeight is not one number per event"):
        run_skim(fileset, tmp_path / "jagged", _config(_processor(tmp_path)), progress=False)


def test_missing_weight_branch_is_one_line_naming_it_and_the_file(tmp_path, capsys):
    _write(tmp_path / "a.root", 20, seed=5, drop=("puWeight",))
    fileset = _fileset(tmp_path, ["a.root"], weight="genWeight * puWeight")
    out = tmp_path / "skim"
    with pytest.raises(SystemExit) as exit_:
        main(["skim", str(fileset), "--out", str(out), "--processor", _processor(tmp_path),
              "--executor", "iterative", "--quiet"])
    code = exit_.value.code
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.splitlines() == [err]
    assert err.startswith("hepprep: error: ") and str(tmp_path / "a.root") in err
    assert "missing weight branch puWeight" in err
    assert not (out / "manifest.json").exists() and not list(out.rglob("*.parquet"))


def test_files_disagreeing_on_the_sumw_source_are_refused(tmp_path):
    _write(tmp_path / "a.root", 20, seed=6, runs={"run": np.array([1], np.uint32),
                                                  "genEventSumw": np.array([1.0e5])})
    _write(tmp_path / "b.root", 20, seed=7)
    fileset = _fileset(tmp_path, ["a.root", "b.root"])
    with pytest.raises(StageInputError, match="give 'sumw' in the fileset metadata") as err:
        run_skim(fileset, tmp_path / "skim", _config(_processor(tmp_path)), progress=False)
    assert f"Runs.genEventSumw ({tmp_path / 'a.root'})" in str(err.value)
    assert f"Events.genWeight ({tmp_path / 'b.root'})" in str(err.value)


@pytest.mark.parametrize("weight", ["genWeight + puWeight", "2 * genWeight", "", "genWeight * genWeight",
                                    ["genWeight", 3]])
def test_a_weight_that_is_not_a_product_of_branches_is_a_config_error(tmp_path, weight):
    with pytest.raises(ConfigError, match="weight"):
        config_from_dict({"skim": {"weight": weight}})
    path = _fileset(tmp_path, ["a.root"], weight=weight)
    with pytest.raises(ConfigError, match=r"fileset\.json: dataset 'DY': metadata\.weight"):
        run_skim(path, tmp_path / "skim", _config("processors.ditau:DiTauProcessor"), progress=False)


def test_weight_scale_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="weight_scale"):
        run_skim(_fileset(tmp_path, ["a.root"], weight_scale=0.0), tmp_path / "skim",
                 _config("processors.ditau:DiTauProcessor"), progress=False)
