"""Trust, items 2, 5, 6, 9: what a user writes (fileset, configuration) ends as a correct result or one line.

Dataset names are the user's (DAS-style keys included) and never become paths outside
``--out``; non-finite numbers are refused in every config and fileset field; fileset
metadata is validated like the configuration; `hepprep run` never reuses a generated
sample made with other settings.
"""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest
from _skim_helpers import QUIET_COFFEA

from analysis import config_from_dict, run_prepare, run_skim
from analysis.cli import main
from analysis.errors import StageInputError

pytestmark = QUIET_COFFEA

DAS_SIGNAL = "/GluGluHToTauTau_M125_TuneCP5_13TeV-powheg-pythia8/RunIISummer20UL18NanoAODv9-106X_upgrade2018_realistic_v16_L1v1-v1/NANOAODSIM"
DAS_DY = "/DYJetsToLL_M-50_TuneCP5_13TeV-amcatnloFXFX-pythia8/RunIISummer20UL18NanoAODv9-106X_upgrade2018_realistic_v16_L1v1-v2/NANOAODSIM"


def _cli(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr().err


def _one_line_error(capsys, *argv) -> str:
    code, err = _cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("hepprep: error: "), err
    return lines[0]


# -- item 2: dataset names ---------------------------------------------------------------

def test_folder_names_are_safe_and_distinct_unit():
    from analysis.core.names import dataset_folder, dataset_folders
    from analysis.errors import ConfigError

    assert dataset_folder("DYJetsToLL") == "DYJetsToLL"  # plain names keep their folder
    das = dataset_folder(DAS_DY)
    assert "/" not in das and not das.startswith(".") and das.startswith("DYJetsToLL_M-50_TuneCP5")
    assert len(das) < 200
    assert dataset_folder("jobs") != "jobs"  # the batch folders are not datasets
    for bad in ("", "   ", "../x", "a/../../b", "bad\nname", "///"):
        with pytest.raises(ConfigError):
            dataset_folder(bad)
    with pytest.raises(ConfigError, match="same folder"):
        dataset_folders(["DY", "dy"])
    assert len(set(dataset_folders(["a b", "a_b", "a/b"]).values())) == 3


def _fileset(das_fileset, path, names):
    entry = json.loads(das_fileset.read_text())[DAS_DY]
    one = {"files": dict([next(iter(entry["files"].items()))]), "metadata": entry["metadata"]}
    path.write_text(json.dumps({name: one for name in names}))
    return path


def test_folder_names_are_safe_and_distinct(das_fileset, tmp_path, capsys):
    names = ["DYJetsToLL", "a b", "a_b", "a/b", "jobs"]
    out = tmp_path / "skim"
    code, err = _cli(capsys, "skim", _fileset(das_fileset, tmp_path / "f.json", names), "--out", out,
                     "--executor", "iterative", "--quiet")
    assert code == 0, err
    parts = sorted(out.rglob("part-*.parquet"))
    folders = {p.parent.name for p in parts}
    assert all(p.parent.parent == out for p in parts)  # one folder level, under --out
    assert len(folders) == len(names) and "DYJetsToLL" in folders and "jobs" not in folders
    assert set(json.loads((out / "manifest.json").read_text())["datasets"]) == set(names)
    # two names that would share a folder (on a case-insensitive disk) are refused
    line = _one_line_error(capsys, "skim", _fileset(das_fileset, tmp_path / "g.json", ["DY", "dy"]),
                           "--out", tmp_path / "skim2", "--executor", "iterative", "--quiet")
    assert "same folder" in line and not (tmp_path / "skim2").exists()


@pytest.fixture(scope="module")
def das_fileset(generated_sample, tmp_path_factory):
    """Signal and Drell-Yan of the generated sample, keyed by DAS-style names."""
    raw = json.loads(generated_sample.read_text())
    out = {}
    for das, name in ((DAS_SIGNAL, "GluGluToHToTauTau"), (DAS_DY, "DYJetsToLL")):
        out[das] = {"files": {str((generated_sample.parent / f).resolve()): t
                              for f, t in raw[name]["files"].items()},
                    "metadata": raw[name]["metadata"]}
    path = tmp_path_factory.mktemp("das") / "fileset.json"
    path.write_text(json.dumps(out))
    return path


def test_das_names_are_stored_under_out_and_kept_in_the_data(das_fileset, tmp_path):
    out = tmp_path / "run" / "skim"
    run_skim(das_fileset, out, config_from_dict({}), executor="iterative", progress=False)
    # every part under --out, in the dataset's safe folder
    parts = sorted(out.rglob("part-*.parquet"))
    assert parts and all(p.parent.parent == out for p in parts)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["datasets"]) == {DAS_SIGNAL, DAS_DY}
    folders = {manifest["datasets"][d]["folder"] for d in (DAS_SIGNAL, DAS_DY)}
    assert {p.parent.name for p in parts} == folders and all("/" not in f for f in folders)
    assert any(f.startswith("DYJetsToLL_M-50_TuneCP5") for f in folders)
    assert set(json.loads((out / "cutflow.json").read_text())) == {DAS_SIGNAL, DAS_DY}
    # ...and neither dataset vanishes in prepare; the dataset column keeps the real name
    prep = tmp_path / "run" / "prepared"
    manifest = run_prepare(out, prep, config_from_dict({"prepare": {"bucket_rows": 2000}}), progress=False)
    assert set(manifest["datasets"]) == {DAS_SIGNAL, DAS_DY}
    names = set()
    for path in (prep / "train").glob("*.parquet"):
        names |= set(pq.read_table(path, columns=["dataset"]).column("dataset").to_pylist())
    assert names == {DAS_SIGNAL, DAS_DY}
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["prepared", "skim"]


@pytest.mark.parametrize("name", ["../escaped", "", "/abs/../../etc"])
def test_names_that_cannot_be_made_safe_are_refused(das_fileset, tmp_path, capsys, name):
    raw = json.loads(das_fileset.read_text())
    fileset = tmp_path / "fileset.json"
    fileset.write_text(json.dumps({name: raw[DAS_DY]}))
    line = _one_line_error(capsys, "skim", fileset, "--out", tmp_path / "out" / "skim",
                           "--executor", "iterative", "--quiet")
    assert f"{fileset}: dataset {name!r}:" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "escaped").exists()


# -- item 5: non-finite numbers --------------------------------------------------------

@pytest.mark.parametrize("toml, key", [
    ("[prepare]\nsplit = [nan, 0.2, 0.2]\n", "prepare.split.0"),
    ("lumi_pb = inf\n", "lumi_pb"),
    ("[selection]\ntau_pt_min = nan\n", "selection.tau_pt_min"),
    ("[train.mlp]\nlr = inf\n", "train.mlp.lr"),
    ("[cluster.jobqueue]\nwalltime = inf\n", "cluster.jobqueue.walltime"),
    ("[samples.DY]\nprocess = \"DY\"\nlabel = 0\nxsec_pb = 1.0\ndata_lumi_pb = inf\n"
     "[samples.H]\nprocess = \"ggH\"\nlabel = 1\nxsec_pb = 1.0\n", "samples.DY.data_lumi_pb"),
])
def test_non_finite_config_values_are_refused(tmp_path, capsys, toml, key):
    path = tmp_path / "analysis.toml"
    path.write_text(toml)
    line = _one_line_error(capsys, "config", "show", "--config", path)
    assert line.startswith(f"hepprep: error: {path}: {key}: ") and "finite" in line


# -- item 6: fileset metadata ----------------------------------------------------------

@pytest.mark.parametrize("entry, where", [
    ({"files": 5}, "files: must be a non-empty mapping"),
    ({"files": {"{good}": "Events"}, "metadata": {"process": "DY", "label": 0, "xsec_pb": "3503 pb"}},
     "metadata.xsec_pb: Input should be a valid number"),
    ({"files": {"{good}": "Events"}, "metadata": {"process": "DY", "label": 7, "xsec_pb": 3503.0}},
     "metadata.label: Input should be 1, 0 or -1"),
    ({"files": {"{good}": "Events"}, "metadata": {"process": "DY", "label": 0, "xsec_pb": -3.0}},
     "metadata.xsec_pb: must be a number > 0"),
    ({"files": {"{good}": "Events"}, "metadata": {"process": "DY", "label": 0, "xsec_pb": 1.0, "sumw": 0}},
     "metadata.sumw: must be a number > 0"),
    ({"files": {"{good}": "Events"}, "metadata": {"process": 5, "label": 0, "xsec_pb": 1.0}},
     "metadata.process: Input should be a valid string"),
    ({"files": {"{good}": "Events"}, "metadata": {"process": "DY", "label": -1, "is_mc": True}},
     "is_mc is true but label is -1"),
    ({"files": {"{good}": 3}}, "the value must be the tree name"),
    ({"files": {"{good}": "Events"}, "metdata": {"process": "DY"}}, "metdata: unknown key"),
])
def test_bad_fileset_metadata_is_one_line_naming_file_dataset_and_key(das_fileset, tmp_path, capsys,
                                                                      entry, where):
    good = next(iter(json.loads(das_fileset.read_text())[DAS_DY]["files"]))
    fileset = tmp_path / "fileset.json"
    fileset.write_text(json.dumps({"DYJetsToLL": entry}).replace("{good}", good))
    line = _one_line_error(capsys, "skim", fileset, "--out", tmp_path / "skim", "--executor", "iterative",
                           "--quiet")
    assert line.startswith(f"hepprep: error: {fileset}: dataset 'DYJetsToLL': ") and where in line, line
    assert not (tmp_path / "skim").exists()


def test_non_finite_fileset_numbers_are_refused(das_fileset, tmp_path, capsys):
    good = next(iter(json.loads(das_fileset.read_text())[DAS_DY]["files"]))
    fileset = tmp_path / "fileset.json"
    # json writes NaN/Infinity, and Python's json reads them back
    fileset.write_text(json.dumps({"DYJetsToLL": {"files": {good: "Events"},
                                                  "metadata": {"process": "DY", "label": 0,
                                                               "xsec_pb": float("inf")}}}))
    line = _one_line_error(capsys, "skim", fileset, "--out", tmp_path / "skim", "--quiet")
    assert "metadata.xsec_pb: Input should be a finite number" in line


# -- item 9: `hepprep run` and the generated sample ----------------------------------------

def test_run_refuses_a_generated_sample_of_other_settings(tmp_path):
    from analysis.generate.runner import generate_samples
    from analysis.pipeline import run_pipeline

    small = config_from_dict({"generate": {"events": 400, "files_per_sample": 1, "seed": 5}})
    generate_samples(tmp_path / "samples", small, progress=False)
    other = config_from_dict({"generate": {"events": 400, "files_per_sample": 1, "seed": 6}})
    with pytest.raises(StageInputError, match=r"samples: cannot reuse this generated sample: it was "
                                              r"generated with other settings \(generate.seed 5 -> 6\)"):
        run_pipeline(other, tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples"]  # nothing else was run
    # an old sample folder that does not say how it was made is not trusted either
    os.remove(tmp_path / "samples" / "generate.json")
    with pytest.raises(StageInputError, match="no generate.json records how it was generated"):
        run_pipeline(small, tmp_path, progress=False)


def test_generated_settings_are_recorded(tmp_path, capsys):
    code, err = _cli(capsys, "generate", "--out", tmp_path, "--events", "300", "--files-per-sample", "1",
                     "--seed", "7", "--quiet")
    assert code == 0, err
    settings = json.loads((tmp_path / "generate.json").read_text())
    assert {k: settings["generate"][k] for k in ("events", "files_per_sample", "seed")} == \
        {"events": 300, "files_per_sample": 1, "seed": 7}
    assert set(settings["samples"]) == set(json.loads((tmp_path / "fileset.json").read_text()))
    assert "lumi_pb" in settings
