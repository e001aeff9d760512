"""Trust, acceptance 3: SIGKILL at random points of prepare, train (xgboost, mlp) and evaluate, then a re-run.

Each stage's command is run once undisturbed (the reference), then, in a fresh folder,
started and killed (SIGKILL to its whole process group: the command and its dask
workers, as an out-of-memory kill or a lost node would) at seeded random moments, one in
each of equal slices of the run, each start running over what the earlier kills left. A
last run completes. Its outputs must equal the reference's, byte for byte where the stage
is deterministic (everything but wall-clock times), and no temporary file or folder may be
left anywhere.

CI kills every stage at 3 moments (start-up, the work, the writing: one slice each); the
full form, 10 moments a stage, is marked slow and run by `make bench`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _prepare_helpers import default_samples, write_skim

REPO = Path(__file__).resolve().parents[1]
# Kill moments per stage: CI's form, and the full form `make bench` runs.
KILL_COUNTS = [pytest.param(3, id="ci-3-kills"), pytest.param(10, id="full-10-kills", marks=pytest.mark.slow)]
# Keys whose values are wall-clock times or the machine's speed, not results.
TIMING_KEYS = {"train_seconds", "seconds"}
CONFIG = """
features = ["tau1_pt", "m_vis", "mjj"]
[prepare]
bucket_rows = 2000
file_rows = 1000
row_group_rows = 250
[cluster]
n_workers = 1
memory_limit = "2GiB"
[train.xgboost]
num_boost_round = 30
early_stopping_rounds = 30
[train.mlp]
hidden = [16]
max_epochs = 4
patience = 10
shuffle_buffer = 1000
read_threads = 1
[evaluate]
n_bins = 8
shap_rows = 200
dpi = 30
"""


@pytest.fixture(scope="module")
def kill_inputs(tmp_path_factory) -> dict[str, Path]:
    """The configuration and the skim, shared read-only by both forms of the test."""
    root = tmp_path_factory.mktemp("kill")
    config = root / "analysis.toml"
    config.write_text(CONFIG)
    skim = write_skim(root / "skim", default_samples(scale=0.4), rows_per_file=1000, row_group_rows=250)
    return {"config": config, "skim": skim}


@pytest.fixture
def work(kill_inputs, tmp_path) -> dict[str, Path]:
    """Each form's outputs in a folder of its own: the references are renamed aside there."""
    return {**kill_inputs, "root": tmp_path}


def _command(stage: str, work: dict[str, Path], out: Path, prep: Path | None = None,
             models: list[Path] | None = None) -> list[str]:
    base = [sys.executable, "-m", "analysis.cli"]
    tail = ["--config", str(work["config"]), "--quiet"]
    if stage == "prepare":
        return [*base, "prepare", str(work["skim"]), "--out", str(out), *tail]
    if stage in ("xgboost", "mlp"):
        resume = ["--resume"] if stage == "mlp" else []
        return [*base, "train", str(prep), "--model", stage, "--device", "cpu", "--out", str(out),
                *resume, *tail]
    return [*base, "evaluate", *map(str, models), str(prep), "--out", str(out), *tail]


def _run(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    return time.perf_counter() - start


def _kill_at(command: list[str], seconds: float) -> None:
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    else:
        return  # finished before the kill: the next start finds nothing (or all) to do
    # the group is gone only when its last member is: dask workers die with it
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def _without_timing(value):
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _outputs(folder: Path) -> dict[str, object]:
    """Every file under ``folder``: JSON without timing keys, anything else as bytes."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            rel = str(path.relative_to(folder))
            if path.suffix == ".json":
                out[rel] = _without_timing(json.loads(path.read_text()))
            elif path.name == "checkpoint.pt":  # its history holds each epoch's wall time
                out[rel] = _checkpoint_content(path)
            else:
                out[rel] = path.read_bytes()
    return out


def _checkpoint_content(path: Path) -> object:
    import torch

    def plain(value):
        if isinstance(value, torch.Tensor):
            return (str(value.dtype), tuple(value.shape), value.numpy().tobytes())
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if k not in TIMING_KEYS}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(torch.load(path, map_location="cpu", weights_only=True))


def _temporaries(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob(".*") if ".tmp" in p.name or ".old" in p.name)


def _reference(stage: str, work: dict[str, Path], target: Path, **paths) -> tuple[Path, float]:
    """The undisturbed run into ``target``, then moved aside: (its folder, its duration)."""
    seconds = _run(_command(stage, work, target, **paths))
    reference = target.with_name(f"{target.name}-reference")
    target.rename(reference)
    return reference, seconds


def kill_moments(seconds: float, kills: int, rng: random.Random) -> list[float]:
    """One uniform moment in each of ``kills`` equal slices of [0.2 s, 1.3 x the undisturbed run].

    Over the whole run (start-up, reading, the work, the writing at the end) and somewhat
    beyond: two sequences share the machine's two cores, so a run is slower than its
    undisturbed reference was. One moment a slice, so that a few kills still reach every
    phase rather than, by chance, all land in one.
    """
    low, high = 0.2, 1.3 * seconds
    width = (high - low) / kills
    return [low + (k + rng.random()) * width for k in range(kills)]


def _kill_and_rerun(stage: str, work: dict[str, Path], target: Path, reference: Path, seconds: float,
                    seed: int, kills: int, **paths) -> None:
    """The killed runs and the last run into the reference's own path (outputs that name
    their folder compare equal), then the comparison."""
    command = _command(stage, work, target, **paths)
    for moment in kill_moments(seconds, kills, random.Random(seed)):
        _kill_at(command, moment)
    _run(command)
    assert _outputs(target) == _outputs(reference), stage
    assert _temporaries(target.parent) == [], stage


def test_the_kill_moments_reach_every_slice_of_the_run():
    for kills in (3, 10):
        moments = kill_moments(10.0, kills, random.Random(kills))
        width = (13.0 - 0.2) / kills
        assert [int((m - 0.2) // width) for m in moments] == list(range(kills))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("kills", KILL_COUNTS)
def test_sigkill_anywhere_then_a_rerun_gives_the_undisturbed_outputs(work, kills):
    root = work["root"]
    targets = {"prepare": root / "prepared", "xgboost": root / "models" / "xgboost",
               "mlp": root / "models" / "mlp", "evaluate": root / "evaluation"}
    refs = {}
    refs["prepare"] = _reference("prepare", work, targets["prepare"])
    # the later stages read the reference preparation and models (the killed ones equal them)
    prep = refs["prepare"][0]
    for kind in ("xgboost", "mlp"):
        refs[kind] = _reference(kind, work, targets[kind], prep=prep)
    inputs = {"prepare": {}, "xgboost": {"prep": prep}, "mlp": {"prep": prep},
              "evaluate": {"prep": prep, "models": [refs["xgboost"][0], refs["mlp"][0]]}}
    refs["evaluate"] = _reference("evaluate", work, targets["evaluate"], **inputs["evaluate"])
    # Two sequences at a time (the machine has two cores), each about as long.
    lanes = [("prepare", "evaluate"), ("xgboost", "mlp")]
    seeds = {"prepare": 1, "xgboost": 2, "mlp": 3, "evaluate": 4}

    def lane(stages):
        for stage in stages:
            _kill_and_rerun(stage, work, targets[stage], *refs[stage], seed=seeds[stage], kills=kills,
                            **inputs[stage])
            print(f"{stage}: undisturbed run {refs[stage][1]:.1f} s, {kills} kills, outputs equal")

    with ThreadPoolExecutor(max_workers=len(lanes)) as pool:
        for done in [pool.submit(lane, stages) for stages in lanes]:
            done.result()
