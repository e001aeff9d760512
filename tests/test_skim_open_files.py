"""Skim stage tests: with the iterative executor each input file's TTree is read once, the files are closed after the run.

(With worker processes, the workers check the files and keep them open: tests/test_skim_pool.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import uproot
from _skim_helpers import QUIET_COFFEA, default_config, subset_fileset

import analysis.skim.runner
from analysis.skim.inputs import InputFile, check_file
from processors.ditau import DiTauProcessor
from analysis.skim.open_files import OpenFiles
from analysis.skim.runner import run_skim

pytestmark = QUIET_COFFEA


@pytest.fixture
def tree_reads(monkeypatch):
    """Counts TTree deserialisations (uproot reads a TTree's metadata in `read_members`)."""
    model = uproot.models.TTree.Model_TTree_v20
    original = model.read_members
    reads = []

    def counting(self, chunk, cursor, context, file):
        reads.append(file.file_path)
        return original(self, chunk, cursor, context, file)

    monkeypatch.setattr(model, "read_members", counting)
    return reads


def _files(fileset: Path) -> list[str]:
    return [str((fileset.parent / f).resolve()) for e in json.loads(fileset.read_text()).values()
            for f in e["files"]]


def test_iterative_skim_reads_each_tree_once_and_closes_the_files(generated_sample, tmp_path,
                                                                 tree_reads, monkeypatch):
    fileset = subset_fileset(generated_sample, ["GluGluToHToTauTau", "TTbar"], tmp_path / "fileset.json")
    files = _files(fileset)
    kept = []

    class Recording(OpenFiles):
        def open(self, path, **options):
            file, keep = super().open(path, **options)
            kept.append(file)
            return file, keep

    monkeypatch.setattr(analysis.skim.runner, "OpenFiles", Recording)
    summary = run_skim(fileset, tmp_path / "iterative", default_config(), executor="iterative",
                       chunksize=300, progress=False)
    assert summary["chunks"] >= 2 * len(files)  # several chunks per file, each opening it
    assert sorted(tree_reads) == sorted(files)  # the check's read, reused by every chunk
    assert len(kept) == len(files) and all(f.closed for f in kept)


def test_futures_skim_reads_trees_in_workers_only(generated_sample, tmp_path, tree_reads):
    # The workers check the files and run the chunks: this process reads no TTree.
    fileset = subset_fileset(generated_sample, ["GluGluToHToTauTau"], tmp_path / "fileset.json")
    summary = run_skim(fileset, tmp_path / "futures", default_config(), executor="futures", workers=2,
                       chunksize=100, progress=False)
    assert summary["chunks_run"] >= 2 * len(_files(fileset)) and tree_reads == []
    # With one worker the checks stay here, once per file.
    run_skim(fileset, tmp_path / "one", default_config(), executor="futures", workers=1,
             chunksize=100, progress=False)
    assert sorted(tree_reads) == sorted(_files(fileset))


def test_open_files_stop_keeping_at_the_branch_bound(generated_sample):
    paths = _files(generated_sample)[:3]
    open_files = OpenFiles(max_branches=1)
    processor = DiTauProcessor(lumi_pb=1.0, out_dir=".")
    items = [check_file(InputFile(dataset="d", path=p, treename="Events"), processor=processor, is_mc=True,
                        need_sumw=False, open_files=open_files) for p in paths]
    assert all(item.entries > 0 for item in items)
    assert len(open_files) == 1  # the first file's tree already holds more than one branch
    first = open_files._files[0]
    assert first.file_path == paths[0] and not first.closed and open_files.object_cache
    # Once the chunks start, their opens of files not kept add nothing to the cache.
    options = open_files.chunk_options()
    assert options["object_cache"] is open_files.object_cache
    held = dict(open_files.object_cache)
    uproot.open(paths[2], **options)["Events"]
    assert open_files.object_cache == held
    open_files.close()
    assert len(open_files) == 0 and not open_files.object_cache and first.closed
