"""Skim stage tests: each kind of bad input file gives one line naming file and cause, or is skipped and recorded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import awkward as ak
import pytest
import uproot
from _skim_helpers import QUIET_COFFEA

from analysis.cli import main
from analysis.config import default_config
from analysis.errors import InputFileError
from analysis.skim.runner import run_skim

pytestmark = QUIET_COFFEA

GOOD = "GluGluToHToTauTau"


@pytest.fixture(scope="module")
def good_file(generated_sample, tmp_path_factory):
    fileset = json.loads(generated_sample.read_text())
    src = generated_sample.parent / next(iter(fileset[GOOD]["files"]))
    dst = tmp_path_factory.mktemp("good") / "good.root"
    shutil.copy(src, dst)
    return dst


def _rewrite(good, path, *, drop=(), entries=None):
    """Copy `good` to `path` as a TTree through uproot, without the branches in `drop`."""
    tree = uproot.open(good)["Events"]
    names = [k for k in tree.keys() if k not in drop and not k.startswith("n")
             and k.split("_", 1)[0] not in ("Muon", "Electron", "Photon", "GenPart")]
    arrays = tree.arrays(names)
    if entries is not None:
        arrays = arrays[:entries]
    data = {f: arrays[f] for f in names if not f.startswith(("Tau_", "Jet_"))}
    for prefix in ("Tau", "Jet"):
        data[prefix] = ak.zip({f.split("_", 1)[1]: arrays[f] for f in names if f.startswith(f"{prefix}_")})
    with uproot.recreate(path) as file:
        file.mktree("Events", {k: v.type for k, v in data.items()})
        file["Events"].extend(data)


def _corrupt_basket(good, path, branch="Tau_pt"):
    """A file whose header and branch list are fine but one basket of `branch` is unreadable."""
    data = bytearray(good.read_bytes())
    seek = int(uproot.open(good)["Events"][branch].member("fBasketSeek")[0])
    # TKey header: Nbytes (4 bytes), Version (2), ObjLen (4). A wrong ObjLen makes the
    # basket's payload decode to the wrong size.
    data[seek + 6:seek + 10] = b"\x7f\xff\xff\xff"
    path.write_bytes(bytes(data))


def _make(kind, good, tmp_path):
    path = tmp_path / f"{kind}.root"
    if kind == "missing":
        pass
    elif kind == "not_root":
        path.write_text("run,event\n1,2\n")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size * 6 // 10])
    elif kind == "truncated_tail":
        path.write_bytes(good.read_bytes()[:-100])
    elif kind == "no_events":
        with uproot.recreate(path) as file:
            file.mktree("Runs", {"run": "int32"}).extend({"run": [1, 2]})
    elif kind == "empty_bytes":
        path.write_bytes(b"")
    elif kind == "empty_tree":
        _rewrite(good, path, entries=0)
    elif kind == "missing_branch":
        _rewrite(good, path, drop=("Jet_btag",))
    elif kind == "corrupt_basket":
        _rewrite(good, tmp_path / "copy.root")  # a new file UUID, unlike a byte copy
        _corrupt_basket(tmp_path / "copy.root", path)
    elif kind == "duplicate":
        shutil.copy(good, path)
    return path


CASES = {
    "missing": "no such file",
    "not_root": "not a ROOT file (starts with b'run,', expected b'root')",
    "truncated": "truncated ROOT file: its header says",
    "truncated_tail": "truncated ROOT file: its header says",
    "no_events": "no 'Events' tree (the file holds: Runs (TTree))",
    "empty_bytes": "empty file (0 bytes)",
    "empty_tree": "empty file: the 'Events' tree has 0 entries",
    "missing_branch": "missing branch Jet_btag (input profile 'outreach2012')",
    "corrupt_basket": "cannot read entries 0-",  # ... of Events (ValueError: ...)
    "duplicate": "same ROOT file UUID",
}


def _fileset(tmp_path, good, bad):
    fileset = tmp_path / "fileset.json"
    meta = {"process": "ggH", "is_mc": True, "label": 1, "xsec_pb": 19.6, "sumw": 1000.0}
    fileset.write_text(json.dumps({GOOD: {"files": {str(good): "Events", str(bad): "Events"},
                                          "metadata": meta}}))
    return fileset


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_input_is_one_line_naming_file_and_cause(kind, good_file, tmp_path, capsys):
    bad = _make(kind, good_file, tmp_path)
    out = tmp_path / "skim"
    with pytest.raises(SystemExit) as exit_info:
        main(["skim", str(_fileset(tmp_path, good_file, bad)), "--out", str(out),
              "--executor", "iterative", "--quiet"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    assert err.startswith(f"hepprep: error: {bad}: {CASES[kind]}"), err
    if kind == "corrupt_basket":
        assert "of Events (ValueError: " in err
    # Never a part of the bad file, never a temporary file.
    uuids = [f["uuid"] for f in json.loads((out / "manifest.json").read_text())["files"]
             if f["path"] == str(bad)] if (out / "manifest.json").exists() else []
    assert not [p for p in out.rglob("*") if p.name.startswith(".part-")]
    assert not [p for u in uuids if u for p in out.glob(f"*/part-{u}-*")]


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_input_is_skipped_and_recorded_with_skip_bad_files(kind, good_file, tmp_path):
    bad = _make(kind, good_file, tmp_path)
    out = tmp_path / "skim"
    summary = run_skim(_fileset(tmp_path, good_file, bad), out, default_config(),
                       executor="iterative", skip_bad_files=True, progress=False)
    assert summary["complete"] and summary["bad_files"] == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(e["path"], e["cause"].startswith(CASES[kind])) for e in manifest["errors"]] == [(str(bad), True)]
    status = {f["path"]: f["status"] for f in manifest["files"]}
    assert status == {str(good_file): "done", str(bad): "skipped"}
    good_uuid = next(f["uuid"] for f in manifest["files"] if f["path"] == str(good_file))
    parts = list(out.glob("*/part-*.parquet"))
    assert parts and all(good_uuid in p.name for p in parts)
    cutflow = json.loads((out / "cutflow.json").read_text())
    assert cutflow[GOOD]["cuts"]["all"]["events"] == uproot.open(good_file)["Events"].num_entries


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_input_checked_in_worker_processes_is_the_same(kind, good_file, tmp_path):
    """Two workers check the files (analysis.skim.checks): the same error, or the same record."""
    bad = _make(kind, good_file, tmp_path)
    fileset = _fileset(tmp_path, good_file, bad)
    records = {}
    for executor, workers in (("iterative", 1), ("futures", 2)):
        with pytest.raises(InputFileError) as raised:
            run_skim(fileset, tmp_path / f"{executor}-raise", default_config(), executor=executor,
                     workers=workers, progress=False)
        out = tmp_path / executor
        summary = run_skim(fileset, out, default_config(), executor=executor, workers=workers,
                           skip_bad_files=True, progress=False)
        manifest = json.loads((out / "manifest.json").read_text())
        records[executor] = (str(raised.value), summary["rows"], summary["bad_files"], manifest["errors"],
                             [(f["path"], f["status"], f["uuid"]) for f in manifest["files"]],
                             json.loads((out / "cutflow.json").read_text()),
                             sorted(p.name for p in out.glob("*/part-*.parquet")))
    assert records["futures"] == records["iterative"]
    assert records["futures"][0].startswith(f"{bad}: {CASES[kind]}")


def test_command_line_exit_status_and_message_in_a_real_process(good_file, tmp_path):
    bad = _make("not_root", good_file, tmp_path)
    cmd = [sys.executable, "-m", "analysis.cli", "skim", str(_fileset(tmp_path, good_file, bad)),
           "--out", str(tmp_path / "skim"), "--executor", "iterative", "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr == f"hepprep: error: {bad}: {CASES['not_root']}\n"
    result = subprocess.run(cmd + ["--skip-bad-files"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "1 bad file(s) skipped, see manifest.json" in result.stderr
