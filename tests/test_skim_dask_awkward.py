"""``hepprep skim --executor dask-awkward``: coffea's dask mode gives the iterative executor's parts.

Each processor (the Z->mumu one of test_plugins.py, whose ``select`` runs on the dataset's
dask-awkward events; the di-tau one, numpy code run per chunk inside the graph) skims a
sample with both executors: every part holds the same table and summary, and cutflow.json
and the manifest (but its provenance, which records the executor) are the same. A second
run touches no part; a removed part is the one chunk run again; a processor's bug, at
graph building or while computing, is one line; an RNTuple input is refused in one line.

The dask runs use an in-process dask cluster (``--scheduler``): the same client path as a
LocalCluster's, without starting worker processes on the test machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from _skim_helpers import QUIET_COFFEA, subset_fileset
from analysis import config_from_dict, run_skim
from analysis.cli import main
from analysis.config import load_config
from analysis.generate.runner import generate_samples
from test_plugins import ZMUMU

pytestmark = QUIET_COFFEA

# The processors that must give the iterative executor's rows (issue 14): a spec for
# [skim] processor, "zmumu" standing for test_plugins.py's Z->mumu file. One line per processor.
PROCESSORS = {
    "zmumu": "zmumu",
    "ditau": "processors.ditau:DiTauProcessor",
    "mutau": "processors.mutau:MuTauProcessor",
}
# (processor, sample): the real NanoAOD fixture and a part of the generated sample (MC and data).
CASES = [("zmumu", "nano_dy"), ("zmumu", "generated"), ("ditau", "generated"), ("mutau", "mutau")]
MUTAU_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mutau.toml"
GENERATED = ["DYJetsToLL", "GluGluToHToTauTau", "Run2012B_TauPlusX"]


@pytest.fixture(scope="module")
def scheduler():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def _processor_spec(name: str, folder: Path, source: str = ZMUMU) -> str:
    if PROCESSORS[name] != "zmumu":
        return PROCESSORS[name]
    path = folder / "zmumu_analysis.py"
    path.write_text(source.replace("VERSION", "1"))
    return f"{path}:ZMuMu"


def _fileset(sample: str, folder: Path, nano_dy_path: Path, generated_sample: Path) -> Path:
    if sample == "mutau":  # a small sample of the mu-tau_h example's own processes
        config = load_config(MUTAU_EXAMPLE, {"generate": {"events": 3000, "files_per_sample": 1,
                                                          "data_scale": 0.1}})
        return generate_samples(folder / "samples", config, progress=False)
    if sample == "generated":
        return subset_fileset(generated_sample, GENERATED, folder / "fileset.json")
    path = folder / "fileset.json"
    path.write_text(json.dumps({"DY": {"files": {str(nano_dy_path): "Events"},
                                       "metadata": {"process": "DY", "label": 0, "xsec_pb": 6025.2}}}))
    return path


def _same_rows(got, expected) -> bool:
    """Equal tables, NaN (a jet that is absent) equal to NaN: pyarrow's `equals` says NaN != NaN."""
    return got.schema == expected.schema and got.to_pandas().equals(expected.to_pandas())


def _parts(out: Path) -> dict[str, Path]:
    return {str(p.relative_to(out)): p for p in sorted(out.glob("*/part-*.parquet"))}


def _manifest(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.pop("provenance")  # the configuration, executor included
    return manifest


@pytest.fixture(scope="module", params=CASES, ids=[f"{p}-{s}" for p, s in CASES])
def both_executors(request, tmp_path_factory, nano_dy_path, generated_sample, scheduler):
    processor, sample = request.param
    root = tmp_path_factory.mktemp(f"dak-{processor}-{sample}")
    fileset = _fileset(sample, root, nano_dy_path, generated_sample)
    # small chunks on the 40-event file: several partitions of one file
    config = config_from_dict({"skim": {"processor": _processor_spec(processor, root),
                                        "chunksize": 15 if sample == "nano_dy" else 1500}})
    iterative = run_skim(fileset, root / "iterative", config, executor="iterative", progress=False)
    lazy = run_skim(fileset, root / "dask", config, executor="dask-awkward", scheduler=scheduler,
                    progress=False)
    return {"root": root, "fileset": fileset, "config": config, "iterative": iterative, "dask": lazy}


def test_the_same_parts_cutflow_and_manifest_as_iterative(both_executors):
    root = both_executors["root"]
    assert both_executors["dask"]["chunks_run"] == both_executors["iterative"]["chunks_run"] > 1
    assert both_executors["dask"]["rows"] == both_executors["iterative"]["rows"] > 0
    iterative, lazy = _parts(root / "iterative"), _parts(root / "dask")
    assert list(lazy) == list(iterative)
    for name, path in iterative.items():
        expected, got = pq.read_table(path), pq.read_table(lazy[name])
        assert got.schema == expected.schema, name  # the summary (key-value metadata) included
        assert _same_rows(got, expected), name
    assert (root / "dask" / "cutflow.json").read_text() == (root / "iterative" / "cutflow.json").read_text()
    assert _manifest(root / "dask") == _manifest(root / "iterative")


def test_resume_runs_only_what_is_missing(both_executors, scheduler):
    root, fileset, config = both_executors["root"], both_executors["fileset"], both_executors["config"]
    parts = _parts(root / "dask")
    before = {name: p.stat().st_mtime_ns for name, p in parts.items()}
    again = run_skim(fileset, root / "dask", config, executor="dask-awkward", scheduler=scheduler,
                     progress=False)
    assert again["chunks_run"] == 0 and again["chunks_skipped"] == len(parts)
    assert {name: p.stat().st_mtime_ns for name, p in parts.items()} == before
    removed = sorted(parts)[1]
    parts[removed].unlink()
    again = run_skim(fileset, root / "dask", config, executor="dask-awkward", scheduler=scheduler,
                     progress=False)
    assert again["chunks_run"] == 1 and again["rows"] == both_executors["iterative"]["rows"]
    assert _same_rows(pq.read_table(parts[removed]), pq.read_table(root / "iterative" / removed))
    assert {n: p.stat().st_mtime_ns for n, p in parts.items() if n != removed} == \
        {n: t for n, t in before.items() if n != removed}
    assert (root / "dask" / "cutflow.json").read_text() == (root / "iterative" / "cutflow.json").read_text()


def _cli(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr().err


def test_a_processor_bug_is_one_line(nano_dy_path, tmp_path, capsys, scheduler):
    fileset = _fileset("nano_dy", tmp_path, nano_dy_path, Path())
    # at graph building: where in select
    broken = _processor_spec("zmumu", tmp_path, ZMUMU.replace("mass = (mu1 + mu2).mass",
                                                              "mass = (mu1 + mu2).mass + events.Nope.x"))
    code, err = _cli(capsys, "skim", fileset, "--out", tmp_path / "skim", "--executor", "dask-awkward",
                     "--scheduler", scheduler, "--processor", broken, "--quiet")
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("hepprep: error: processor zmumu raised AttributeError: ") and "Nope" in err, err
    assert "zmumu_analysis.py:35 in select" in err or "line 35 in select" in err, err
    # while computing: a column of another length than the selected events
    (tmp_path / "short").mkdir()
    short = _processor_spec("zmumu", tmp_path / "short", ZMUMU.replace('"nmuons": ak.num(muons[window])',
                                                                          '"nmuons": ak.num(events.Muon)'))
    code, err = _cli(capsys, "skim", fileset, "--out", tmp_path / "skim", "--executor", "dask-awkward",
                     "--scheduler", scheduler, "--processor", short, "--quiet")
    assert code == 1 and err.count("\n") == 1, err
    assert "processor zmumu: column 'nmuons' has shape (40,), expected one value for each of the 6" in err, err
    assert not list((tmp_path / "skim").glob("*/part-*.parquet"))


def test_an_rntuple_input_is_one_line(cms_fixtures, tmp_path, capsys):
    rntuple = cms_fixtures.nano_dy_rntuple
    fileset = tmp_path / "fileset.json"
    fileset.write_text(json.dumps({"DY": {"files": {str(rntuple): "Events"},
                                          "metadata": {"process": "DY", "label": 0, "xsec_pb": 1.0}}}))
    code, err = _cli(capsys, "skim", fileset, "--out", tmp_path / "skim", "--executor", "dask-awkward",
                     "--processor", _processor_spec("zmumu", tmp_path), "--quiet")
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"hepprep: error: {rntuple}: ") and "coffea's dask mode cannot read" in err, err
    assert not (tmp_path / "skim").exists()
