"""Configuration: defaults from PHYSICS.md, TOML loading, and one-line errors naming the key."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from analysis.cli import main
from analysis.config import (Config, ConfigError, config_from_dict, config_to_toml, default_config,
                             load_config, parse_compression)


def test_defaults_match_physics_md():
    cfg = default_config()
    assert cfg.lumi_pb == pytest.approx(11_467.0)
    expected = {  # PHYSICS.md "Samples": dataset -> (process, label, xsec_pb)
        "GluGluToHToTauTau": ("ggH", 1, 19.6), "VBF_HToTauTau": ("VBF", 1, 1.55),
        "DYJetsToLL": ("DY", 0, 3503.7), "TTbar": ("TT", 0, 225.2),
        "W1JetsToLNu": ("W1J", 0, 6381.2), "W2JetsToLNu": ("W2J", 0, 2039.8),
        "W3JetsToLNu": ("W3J", 0, 612.5),
        "Run2012B_TauPlusX": ("data", -1, None), "Run2012C_TauPlusX": ("data", -1, None),
    }
    got = {name: (s.process, s.label, s.xsec_pb) for name, s in cfg.samples.items()}
    assert got == expected
    data_lumi = sum(s.data_lumi_pb for s in cfg.samples.values() if s.label == -1)
    assert data_lumi == pytest.approx(cfg.lumi_pb)
    sel = cfg.selection
    assert (sel.tau_pt_min, sel.tau_abs_eta_max, sel.tau_iso) == (20.0, 2.3, "Medium")
    assert (sel.jet_pt_min, sel.jet_abs_eta_max, sel.min_jets) == (30.0, 4.7, 2)
    assert cfg.prepare.split == (0.6, 0.2, 0.2)
    assert [name for name, s in cfg.samples.items() if s.label == 1] == ["GluGluToHToTauTau", "VBF_HToTauTau"]


def test_toml_round_trip(tmp_path):
    cfg = load_config(None, {"skim": {"chunksize": 5000}, "prepare": {"split": [0.5, 0.25, 0.25]}})
    path = tmp_path / "analysis.toml"
    path.write_text(config_to_toml(cfg))
    again = load_config(path)
    assert again == cfg
    assert again.skim.chunksize == 5000 and again.prepare.split == (0.5, 0.25, 0.25)


def test_file_sections_merge_with_defaults(tmp_path):
    path = tmp_path / "analysis.toml"
    path.write_text("[selection]\ntau_pt_min = 25.0\n[skim]\nworkers = 4\n")
    cfg = load_config(path, {"skim": {"workers": 3}})
    assert cfg.selection.tau_pt_min == 25.0
    assert cfg.selection.jet_pt_min == 30.0  # untouched default
    assert cfg.skim.workers == 3  # the flag wins over the file


def test_samples_table_replaces_default_samples():
    cfg = config_from_dict({"samples": {
        "sig": {"process": "H", "label": 1, "xsec_pb": 1.0},
        "bkg": {"process": "Z", "label": 0, "xsec_pb": 10.0}}})
    assert list(cfg.samples) == ["sig", "bkg"]


@pytest.mark.parametrize("toml_text, message", [
    ("[skim]\nchunksize_x = 3\n", "analysis.toml: skim.chunksize_x: unknown key"),
    ("bogus = 1\n", "analysis.toml: bogus: unknown key"),
    ("lumi_pb = \"lots\"\n", "analysis.toml: lumi_pb: Input should be a valid number"),
    ("lumi_pb = -5.0\n", "analysis.toml: lumi_pb: must be > 0, got -5.0"),
    ("[prepare]\nsplit = [0.5, 0.2, 0.2]\n", "analysis.toml: prepare.split: fractions must sum to 1"),
    ("[prepare]\nsplit = [0.7, -0.1, 0.4]\n", "analysis.toml: prepare.split: fractions must be >= 0"),
    ("[samples.A]\nprocess = \"a\"\nlabel = 1\nxsec_pb = -1.0\n[samples.B]\nprocess = \"b\"\nlabel = 0\nxsec_pb = 1.0\n",
     "analysis.toml: samples.A.xsec_pb: must be a finite number > 0, got -1.0"),
    ("[samples.A]\nprocess = \"a\"\nlabel = 1\n", "analysis.toml: samples.A.xsec_pb: a simulated sample"),
    ("[samples.A]\nprocess = \"a\"\nlabel = 3\nxsec_pb = 1.0\n", "analysis.toml: samples.A.label: Input should be 1, 0 or -1"),
    ("[generate]\nevents = 0\n", "analysis.toml: generate.events: Input should be greater than 0"),
    ("[generate]\ncompression = \"GZIP:3\"\n", "analysis.toml: generate.compression: unknown compression 'GZIP:3'"),
    ("[selection]\ntau_iso = \"Medum\"\n", "analysis.toml: selection.tau_iso: Input should be 'VLoose', 'Loose', 'Medium' or 'Tight'"),
    ("[selection]\njet_pt_min = -1.0\n", "analysis.toml: selection.jet_pt_min: must be >= 0, got -1.0"),
    ("features = [\"m_vis\", \"m_vis\"]\n", "analysis.toml: features: listed twice: m_vis"),
    ("[cluster]\nkind = \"address\"\n", "analysis.toml: cluster.address: kind = 'address' needs the scheduler address"),
    ("[skim\n", "analysis.toml: not valid TOML"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path, toml_text, message):
    path = tmp_path / "analysis.toml"
    path.write_text(toml_text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(str(tmp_path)) and message in text, text


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize("value, expected", [("LZ4:1", ("LZ4", 1)), ("zstd:5", ("ZSTD", 5)),
                                              ("ZLIB", ("ZLIB", 1)), ("LZMA:9", ("LZMA", 9))])
def test_parse_compression(value, expected):
    assert parse_compression(value) == expected


def _cli(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_cli_config_show_prints_effective_toml(capsys, tmp_path):
    path = tmp_path / "a.toml"
    path.write_text("[selection]\ntau_pt_min = 27.5\n")
    code, out, err = _cli(capsys, "config", "show", "--config", str(path))
    assert code == 0, err
    shown = tomllib.loads(out)
    assert shown["selection"]["tau_pt_min"] == 27.5
    assert Config.model_validate(shown) == load_config(path)


# A malformed command line is a usage error (exit 2, as click and argparse do); a value
# hepprep reads and refuses is an input error (exit 1).
@pytest.mark.parametrize("argv, message, exit_code", [
    (["config", "show", "--bogus"], "hepprep config show: error: No such option: --bogus", 2),
    (["generate", "--out", "x", "--events", "-3"], "generate.events: Input should be greater than 0", 1),
    (["generate", "--out", "x", "--events", "many"], "Invalid value for '--events'", 2),
    (["generate", "--out", "x", "--compression", "GZIP:1"], "generate.compression: unknown compression", 1),
    (["generate"], "Missing option '--out'", 2),
    (["nosuchcommand"], "No such command 'nosuchcommand'", 2),
])
def test_cli_bad_input_is_one_line(capsys, argv, message, exit_code):
    code, out, err = _cli(capsys, *argv)
    assert code == exit_code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


def test_console_script_bad_config_exit_code(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[skim]\nexecutor = \"threads\"\n")
    proc = subprocess.run([sys.executable, "-m", "analysis.cli", "config", "show", "-c", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"hepprep: error: {path}: skim.executor: Input should be "
                                   "'auto', 'iterative', 'futures', 'dask' or 'dask-awkward'")
