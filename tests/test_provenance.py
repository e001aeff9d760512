"""Provenance: every stage's record names the code, the configuration (and its hash), the inputs
and the seeds; `hepprep provenance DIR` follows them back to the fileset and tells what changed.

One tiny `hepprep run` (3,000 generated events, 10 boosting rounds, xgboost only) per module.
The fixture reads everything the read-only tests check right after the run, so the last
test may change the run's skim and preparation to see them reported as CHANGED.
"""

from __future__ import annotations

import json
import os
import re
from importlib import metadata
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from _skim_helpers import QUIET_COFFEA

from analysis.cli import main
from analysis.config import config_from_dict, default_config, with_overrides
from analysis.core.provenance import build_provenance, config_hash, file_sha256, git_commit
from analysis.core.skimmed import skim_fingerprint
from analysis.lineage import provenance_report
from analysis.pipeline import run_pipeline
from analysis.prepare.runner import run_prepare
from analysis.skim.runner import run_skim

pytestmark = QUIET_COFFEA

SETTINGS = {"features": ["tau1_pt", "m_vis", "mjj"],
            "generate": {"events": 3000, "files_per_sample": 1, "data_scale": 0.1, "seed": 5},
            "skim": {"executor": "iterative"}, "cluster": {"n_workers": 1},
            "train": {"device": "cpu", "xgboost": {"num_boost_round": 10}, "mlp": {"max_epochs": 1}},
            "evaluate": {"dpi": 30, "n_bins": 8, "shap_rows": 200}}
FIELDS = {"stage", "hepprep_version", "git_commit", "command", "platform", "config_hash", "seeds",
          "inputs", "libraries", "config"}
LIBRARIES = {"python", "numpy", "coffea", "uproot", "awkward", "dask", "distributed", "pyarrow", "xgboost",
             "torch"}


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("provenance") / "run"
    config = config_from_dict(SETTINGS)
    run_pipeline(config, out, models=("xgboost",), progress=False)
    skim = out / "skim"
    manifest_bytes = (skim / "manifest.json").read_bytes()
    # a re-run of the finished skim (nothing to do) writes the same record, byte for byte
    run_skim(out / "samples" / "fileset.json", skim, config, progress=False)
    return {"out": out, "config": config, "manifest_bytes": manifest_bytes,
            "rerun_bytes": (skim / "manifest.json").read_bytes(),
            "skim": _read(skim / "manifest.json"), "prepared": _read(out / "prepared" / "manifest.json"),
            "model": _read(out / "models" / "xgboost" / "model_info.json"),
            "metrics": _read(out / "evaluation" / "metrics.json"),
            "skim_now": skim_fingerprint(skim),
            "model_sha": file_sha256(out / "models" / "xgboost" / "model_info.json"),
            "report": (out / "evaluation" / "report.html").read_text(),
            "text": provenance_report(out)}


def test_config_hash_changes_with_one_value_and_equal_configs_hash_equal():
    base = default_config().model_dump(mode="json")
    assert config_hash(base) == config_hash(default_config().model_dump(mode="json"))
    assert config_hash(dict(reversed(list(base.items())))) == config_hash(base)  # key order is not content
    assert re.fullmatch(r"[0-9a-f]{64}", config_hash(base))
    hashes = {config_hash(base)}
    for change in ({"prepare": {"seed": 1235}}, {"selection": {"tau_pt_min": 20.5}},
                   {"train": {"xgboost": {"seed": 8}}}):
        changed = with_overrides(default_config(), change, source="test")
        hashes.add(config_hash(changed.model_dump(mode="json")))
    assert len(hashes) == 4
    with pytest.raises(ValueError):
        config_hash({"lumi_pb": float("nan")})
    record = build_provenance("test", config=base, inputs=[], seeds={"prepare.seed": 1234})
    assert set(record) == FIELDS and record["config_hash"] == config_hash(base) and record["config"] == base


def _common(record: dict, stage: str, config) -> None:
    assert set(record) == FIELDS, stage
    assert record["stage"] == stage
    assert record["hepprep_version"] == metadata.version("hepprep")
    assert record["git_commit"] == git_commit()
    assert git_commit() is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", git_commit())
    assert record["config"] == config.model_dump(mode="json")  # the full effective configuration
    assert record["config_hash"] == config_hash(record["config"])
    assert LIBRARIES <= set(record["libraries"]) and all(record["libraries"].values())
    assert record["platform"] and isinstance(record["command"], str)


def test_skim_manifest_records_the_fileset_and_every_input_file(run):
    manifest, out = run["skim"], run["out"]
    record = manifest["provenance"]
    _common(record, "skim", run["config"])
    assert record["seeds"] == {}
    fileset = out / "samples" / "fileset.json"
    assert record["inputs"][0]["kind"] == "fileset" and record["inputs"][0]["path"] == str(fileset)
    assert record["inputs"][0]["size"] == fileset.stat().st_size
    files = record["inputs"][1:]
    assert [(f["kind"], f["path"], f["uuid"]) for f in files] == [
        ("file", f["path"], f["uuid"]) for f in manifest["files"]]  # the manifest's files, in its order
    assert len(files) == 9 and all(re.fullmatch(r"[0-9a-f-]{36}", f["uuid"]) for f in files)
    for entry in files:
        assert entry["size"] == os.stat(entry["path"]).st_size and entry["mtime"].endswith("+00:00")
    # the skim fingerprint is the parts' on disk, and a re-run that redoes nothing keeps the record
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["fingerprint"])
    assert manifest["fingerprint"] == run["skim_now"]
    assert run["rerun_bytes"] == run["manifest_bytes"]


def test_prepare_manifest_records_the_skim_fingerprint_and_its_seed(run):
    manifest = run["prepared"]
    record = manifest["provenance"]
    _common(record, "prepare", run["config"])
    assert record["seeds"] == {"prepare.seed": 1234}
    assert record["inputs"] == [{"kind": "skim", "path": str(run["out"] / "skim"),
                                 "fingerprint": run["skim"]["fingerprint"]}]
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["fingerprint"])


def test_model_info_records_the_prepared_fingerprint_and_the_model_seed(run):
    info = run["model"]
    record = info["provenance"]
    _common(record, "train", run["config"])
    assert record["seeds"] == {"train.xgboost.seed": 7}
    assert record["inputs"] == [{"kind": "prepared", "path": str(run["out"] / "prepared"),
                                 "fingerprint": run["prepared"]["fingerprint"]}]
    assert info["prepared_fingerprint"] == run["prepared"]["fingerprint"]  # kept as it was
    # nothing of it in the model file or the Parquet files: those stay byte-identical
    assert b'"provenance"' not in (run["out"] / "models" / "xgboost" / "model.json").read_bytes()
    parts = [*(run["out"] / "skim").glob("*/part-*.parquet"), *(run["out"] / "prepared").glob("*/*.parquet")]
    assert len(parts) > 10
    for part in parts:
        assert not any(b"provenance" in k or b'"provenance"' in v
                       for k, v in (pq.read_metadata(part).metadata or {}).items()), part


def test_metrics_json_records_the_prepared_folder_and_each_model(run):
    record = run["metrics"]["provenance"]
    _common(record, "evaluate", run["config"])
    assert record["seeds"] == {"prepare.seed": 1234, "xgboost.seed": 7}
    out = run["out"]
    assert record["inputs"] == [
        {"kind": "prepared", "path": str(out / "prepared"), "fingerprint": run["prepared"]["fingerprint"]},
        {"kind": "model", "path": str(out / "models" / "xgboost"), "fingerprint": run["model_sha"]},
        {"kind": "skim", "path": str(out / "skim"), "fingerprint": run["skim"]["fingerprint"]}]


def test_report_shows_every_stage_of_the_chain(run):
    report = run["report"]
    for label in ("evaluation:", "model xgboost:", "prepared:", "skim:", "generate:"):
        assert f"<h4>{label} <code>" in report, label
    assert run["prepared"]["fingerprint"] in report and run["skim"]["fingerprint"] in report
    assert "CHANGED" not in report


def test_provenance_command_names_every_stage_of_a_run_folder(run):
    text, out = run["text"], run["out"]
    heads = [line for line in text.splitlines() if line.startswith("[")]
    assert heads == [f"[evaluation] {out / 'evaluation'}", f"[model xgboost] {out / 'models' / 'xgboost'}",
                     f"[prepared] {out / 'prepared'}", f"[skim] {out / 'skim'}",
                     f"[generate] {out / 'samples' / 'fileset.json'}"]
    assert "CHANGED" not in text
    # evaluation's three inputs, the model's, prepared's, the skim's fileset and input files
    assert sum(line.endswith(": matches") for line in text.splitlines()) == 3 + 1 + 1 + 2
    assert f"config hash {run['skim']['provenance']['config_hash'][:16]}" in text
    assert "seeds: prepare.seed=1234" in text and "seeds: train.xgboost.seed=7" in text
    assert f"fingerprint {run['skim']['fingerprint'][:16]} (its parts on disk: matches)" in text
    assert "generate.json): seed=5, events=3000, files_per_sample=1" in text


@pytest.mark.parametrize(("content", "cause"), [
    ("notes.txt", "not a hepprep output: no metrics.json (evaluation), model_info.json (model)"),
    ("model.json", "a model folder without model_info.json: its training did not finish"),
    ("manifests/job-0.json", "a batch skim whose job manifests are not merged yet"),
    (None, "no such file or folder")])
def test_provenance_command_refuses_a_folder_that_is_no_output(tmp_path, capsys, content, cause):
    folder = tmp_path / "out"
    if content is not None:
        (folder / content).parent.mkdir(parents=True)
        (folder / content).write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        main(["provenance", str(folder)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"hepprep: error: {folder}: {cause}"), err


def _cli(capsys, *argv: str) -> str:
    main(list(argv))
    return capsys.readouterr().out


def _block(text: str, head: str) -> str:
    return next(b for b in text.split("\n\n") if b.startswith(head))


def test_a_changed_skim_part_and_another_preparation_show_as_changed(run, capsys):
    """Last in the module: it changes the run's skim and preparation."""
    out = run["out"]
    part = sorted((out / "skim" / "TTbar").glob("part-*.parquet"))[0]
    pq.write_table(pq.read_table(part), part, compression="zstd")  # same rows and metadata, other bytes
    text = _cli(capsys, "provenance", str(out / "prepared"))
    assert [line.split(" ")[0] for line in text.splitlines() if line.startswith("[")] == [
        "[prepared]", "[skim]", "[generate]"]
    skim = re.escape(str(out / "skim"))
    assert re.search(rf"input skim {skim} \(fingerprint [0-9a-f]{{16}}\): CHANGED since: "
                     r"fingerprint [0-9a-f]{16} when recorded, [0-9a-f]{16} now", _block(text, "[prepared]"))
    assert "(its parts on disk now " in _block(text, "[skim]") and ": CHANGED)" in _block(text, "[skim]")

    run_prepare(out / "skim", out / "prepared", run["config"], seed=99, progress=False)
    text = _cli(capsys, "provenance", str(out))
    model = _block(text, "[model xgboost]")
    assert "input prepared" in model and "CHANGED since: fingerprint" in model and "(prepared again)" in model
    prepared = _block(text, "[prepared]")
    assert "seeds: prepare.seed=99" in prepared
    assert prepared.endswith(": matches")  # its skim is as it read it
    assert "input prepared" in _block(text, "[evaluation]") and "CHANGED" in _block(text, "[evaluation]")
