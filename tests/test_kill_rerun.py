"""Trust, acceptance 3: SIGKILL at random points of prepare, train (xgboost, mlp) and evaluate, then a re-run.

Each stage's command is run once undisturbed (the reference), then, in a fresh folder,
started and killed (SIGKILL to its whole process group: the command and its dask
workers, as an out-of-memory kill or a lost node would) at 10 seeded random moments,
each start running over what the earlier kills left. A last run completes. Its outputs
must equal the reference's, byte for byte where the stage is deterministic (everything
but wall-clock times), and no temporary file or folder may be left anywhere.
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
KILLS = 10
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
def work(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kill")
    config = root / "analysis.toml"
    config.write_text(CONFIG)
    skim = write_skim(root / "skim", default_samples(scale=0.4), rows_per_file=1000, row_group_rows=250)
    return {"root": root, "config": config, "skim": skim}


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
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
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


def _kill_and_rerun(stage: str, work: dict[str, Path], target: Path, reference: Path, seconds: float,
                    seed: int, **paths) -> None:
    """The killed runs and the last run into the reference's own path (outputs that name
    their folder compare equal), then the comparison."""
    command = _command(stage, work, target, **paths)
    rng = random.Random(seed)
    # Uniform over the whole run (start-up, reading, the work, the writing at the end), and
    # somewhat beyond: two sequences share the machine's two cores, so a run is slower than
    # its undisturbed reference was.
    for moment in sorted(rng.uniform(0.2, 1.3 * seconds) for _ in range(KILLS)):
        _kill_at(command, moment)
    _run(command)
    assert _outputs(target) == _outputs(reference), stage
    assert _temporaries(target.parent) == [], stage


@pytest.mark.timeout(900)
def test_sigkill_anywhere_then_a_rerun_gives_the_undisturbed_outputs(work):
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
            _kill_and_rerun(stage, work, targets[stage], *refs[stage], seed=seeds[stage], **inputs[stage])
            print(f"{stage}: undisturbed run {refs[stage][1]:.1f} s, {KILLS} kills, outputs equal")

    with ThreadPoolExecutor(max_workers=len(lanes)) as pool:
        for done in [pool.submit(lane, stages) for stages in lanes]:
            done.result()
