"""Shared pytest fixtures: every fixture more than one test module uses lives here.

Helper modules (tests/_*_helpers.py) hold plain functions and constants only; a test module
takes these fixtures as arguments, never imports them (tests/test_house_tests.py checks).

- `cms_fixtures`, `nano_dy_path`: the real CMS files in ../shared/fixtures
- `generated_sample`: a ~20k-event generated sample, made once per session
- `fake_sbatch`: an `sbatch` and `squeue` on PATH that record their calls
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _cms_helpers import CmsFixtures, find_cms_fixtures


@pytest.fixture(scope="session")
def cms_fixtures() -> CmsFixtures:
    """The three real CMS files (nano_dy, nano_dy_rntuple, pfnano); a clear error when one is missing."""
    return find_cms_fixtures()


@pytest.fixture(scope="session")
def nano_dy_path(cms_fixtures: CmsFixtures) -> Path:
    """A real CMS Run 2 NanoAOD file (40 Drell-Yan events) from coffea's test samples."""
    return cms_fixtures.nano_dy


@pytest.fixture(scope="module")
def generated_sample(tmp_path_factory) -> Path:
    """fileset.json of a ~20k-event generated sample (2 files per dataset), made once per session.

    Module-scoped as before, but cached under the session's base temp: only the first module
    that asks generates it.
    """
    from _skim_helpers import generate_sample  # uproot, pandas: only for the tests that need them

    return generate_sample(tmp_path_factory.getbasetemp() / "skim-generated-sample")


@pytest.fixture(scope="module")
def executor_fileset(generated_sample, tmp_path_factory) -> Path:
    """A few datasets of the generated sample, for comparing executors (`_skim_helpers.EXECUTOR_DATASETS`)."""
    from _skim_helpers import EXECUTOR_DATASETS, subset_fileset

    return subset_fileset(generated_sample, EXECUTOR_DATASETS, tmp_path_factory.mktemp("fs") / "fileset.json")


@pytest.fixture(scope="module")
def iterative_reference(executor_fileset, tmp_path_factory) -> tuple[Path, dict]:
    """(skim folder, summary) of `executor_fileset` skimmed by the iterative executor: what every executor must give."""
    from _skim_helpers import EXECUTOR_CHUNKSIZE, default_config

    from analysis.skim.runner import run_skim

    out = tmp_path_factory.mktemp("skim-iterative")
    summary = run_skim(executor_fileset, out, default_config(), executor="iterative",
                       chunksize=EXECUTOR_CHUNKSIZE, progress=False)
    return out, summary


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch) -> Path:
    """An `sbatch` on PATH that records its arguments and answers like `sbatch --parsable`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch-calls.txt"
    script = bin_dir / "sbatch"
    script.write_text(f'#!/usr/bin/env bash\necho "$@" >> {calls}\necho "4242;cluster0"\n')
    script.chmod(0o755)
    # And an `squeue` that lists what squeue-out.txt holds (every slice queued, to start).
    queue = tmp_path / "squeue-out.txt"
    queue.write_text("".join(f"4242_{k}\n" for k in range(4)))
    (bin_dir / "squeue").write_text(f'#!/usr/bin/env bash\necho "$@" >> {tmp_path}/squeue-calls.txt\n'
                                    f'cat {queue}\n')
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls
