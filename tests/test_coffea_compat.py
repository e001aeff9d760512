"""House: every coffea, uproot and typer internal hepprep uses, checked so that a new release that changes one fails here by name.

`analysis.skim.coffea_compat` holds the coffea and uproot ones; the CLI's typer one is
checked at the end. Each test fails with the internal's name when it moves or changes.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import json
import re
import tomllib
from pathlib import Path

import pytest
import uproot
from coffea import processor
from coffea.nanoevents import NanoAODSchema
from coffea.processor import executor as coffea_executor

from _skim_helpers import QUIET_COFFEA, subset_fileset
from analysis.config import default_config
from analysis.skim import coffea_compat
from analysis.skim.runner import run_skim

pytestmark = QUIET_COFFEA
REPO = Path(__file__).resolve().parents[1]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def test_coffea_is_pinned_to_the_tested_releases():
    low, high = coffea_compat.TESTED_COFFEA
    installed = _version(importlib.metadata.version("coffea"))
    assert _version(low) <= installed < _version(high), (
        f"coffea {importlib.metadata.version('coffea')} is outside the releases "
        f"analysis/skim/coffea_compat.py was checked against ({low} to below {high})")
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    [pin] = [d for d in deps if d.startswith("coffea")]
    assert pin == f"coffea>={low},<{high}", pin


def test_chunk_tree_finds_the_tree_coffea_opened_for_every_chunk(generated_sample, tmp_path,
                                                                  monkeypatch):
    """NanoEventsFactory._mapping._file_handle: a coffea that moves it would silently fall
    back to the slower lazy reads."""
    from processors.base import SkimProcessor

    # The processor is pickled to the executor: record what its reader finds, by its class.
    found = []
    original = SkimProcessor.read_branches

    def spy(self, events, names):
        found.append(self.chunk_tree(events) if self.chunk_tree is not None else None)
        return original(self, events, names)
    monkeypatch.setattr(SkimProcessor, "read_branches", spy)
    fileset = subset_fileset(generated_sample, ["TTbar"], tmp_path / "fileset.json")
    summary = run_skim(fileset, tmp_path / "out", default_config(), executor="iterative",
                       chunksize=300, progress=False)
    assert len(found) == 2 * summary["chunks_run"] > 0  # the bookkeeping read and the selection's
    assert all(isinstance(t, uproot.behaviors.TTree.TTree) for t in found), (
        "coffea no longer keeps the chunk's file at events.attrs['@events_factory']._mapping._file_handle")


def test_progress_bars_replace_coffeas_rich_bar_and_restore_it():
    original = coffea_executor.rich_bar
    assert callable(original), "coffea.processor.executor.rich_bar is gone"
    # the executors call it: without that, --quiet needs another way to silence them
    assert "rich_bar()" in inspect.getsource(coffea_executor), "coffea's executors no longer call rich_bar()"
    with coffea_compat.progress_bars(False):
        assert coffea_executor.rich_bar is not original
    assert coffea_executor.rich_bar is original


def test_the_runner_calls_its_automatic_retries_per_chunk(generated_sample, tmp_path):
    signature = inspect.signature(processor.Runner.automatic_retries)
    assert list(signature.parameters)[:3] == ["retries", "skipbadfiles", "func"], signature
    calls = []

    def retry(retries, skipbadfiles, func, *args, **kwargs):
        calls.append(retries)
        return coffea_compat.coffea_retries(retries, skipbadfiles, func, *args, **kwargs)

    fileset = json.loads(subset_fileset(generated_sample, ["TTbar"], tmp_path / "f.json").read_text())
    runner = processor.Runner(executor=processor.IterativeExecutor(), schema=NanoAODSchema, chunksize=500)
    coffea_compat.install_chunk_retry(runner, retry)

    class Count(processor.ProcessorABC):
        def process(self, events):
            return {"n": len(events)}

        def postprocess(self, accumulator):
            return accumulator

    out = runner(fileset, processor_instance=Count())
    assert calls and out["n"] > 0, "coffea's Runner no longer calls self.automatic_retries for each chunk"


def test_input_failures_are_recognised_by_coffeas_messages(nano_dy_path, tmp_path):
    from test_skim_fuzz import _wrongly_shaped_copy

    def failure(path: Path) -> BaseException:
        runner = processor.Runner(executor=processor.IterativeExecutor(), schema=NanoAODSchema,
                                  skipbadfiles=False)
        coffea_compat.install_chunk_retry(runner, lambda r, s, func, *a, use_result_type=False, **k: func(*a, **k))
        chunks = list(processor.Runner(executor=processor.IterativeExecutor(), schema=NanoAODSchema)
                      .preprocess({"DY": {"files": {str(nano_dy_path): "Events"}}}))
        chunks = [dataclasses.replace(c, filename=str(path)) for c in chunks]
        with pytest.raises(Exception) as info:
            runner(chunks, processor_instance=_Nothing())
        return info.value

    bad = tmp_path / "wrong_shape.root"
    _wrongly_shaped_copy(nano_dy_path, bad)
    assert coffea_compat.input_failure_kind(failure(bad)) == "cannot build its events", (
        "coffea's work function no longer raises 'Failed creating nanoevents: ...'")
    assert coffea_compat.input_failure_kind(failure(tmp_path / "gone.root")) == "cannot open it again", (
        "coffea's work function no longer raises 'Failed to open file: ...'")
    assert coffea_compat.input_failure_kind(ValueError("Failed processing file: x")) is None


class _Nothing(processor.ProcessorABC):
    def process(self, events):
        return {}

    def postprocess(self, accumulator):
        return accumulator


def test_restrict_typenames_narrows_a_trees_type_names(nano_dy_path):
    with uproot.open(nano_dy_path) as file:
        tree = file["Events"]
        assert len(tree.typenames()) > 1000
        coffea_compat.restrict_typenames(tree, ["run", "Tau_pt"])
        assert sorted(tree.typenames()) == ["Tau_pt", "run"], "uproot's TTree.typenames(filter_name=) changed"


def test_the_cli_reaches_typers_click_exceptions():
    from analysis import cli

    for name in ("NoArgsIsHelpError", "UsageError", "ClickException"):
        assert hasattr(cli._click_exc, name), f"typer's vendored click has no exceptions.{name}"
