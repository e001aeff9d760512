"""Skim stage fuzz test: corrupted copies of a real NanoAOD file end as the intact file's skim or one line.

Over 200 copies of ``nano_dy.root`` (the ``nano_dy_path`` fixture), each corrupted in one
seeded, reproducible way (`make_cases`): a few or many flipped bytes anywhere, a truncation
(with the header's end offset left alone, or set to the new length so that the header check
passes), zeroed or flipped bytes inside the baskets of the branches the skim reads (or of
any branch), and damage to the file header, the top directory and its key list, the
``Events`` TTree's key and metadata, and the streamer record.

Each copy is skimmed through the command line (`analysis.cli.main`) in a child forked from
this process, which has already imported and run the skim once (a cold start costs 3 s, a
warm skim 1 s), two children at a time, with stdout and stderr going to files and a time
limit after which the child is killed. Every copy is skimmed as is; then with
``--skip-bad-files`` every other copy that did not give the intact file's skim, and every tenth
that did. The outcome of each run is one of

* ``ok``: exit 0, and the skim (rows, cutflow.json, the manifest's datasets and file entry)
  equals that of the intact file: the damage was in bytes the skim does not read, or in
  the payload of an uncompressed basket (ROOT keeps no checksum of those: ``MET_phi`` set
  to 0 reads back as 0) of values that no selected event shows (none of the 40 passes the
  default selection);
* ``error``: exit 1, stderr exactly one line ``hepprep: error: <copy>: <cause>``, no part
  (nor temporary part) written, no manifest calling the file done;
* ``skipped`` (``--skip-bad-files`` only): exit 0, stderr only the skim's summary line, the
  manifest recording the copy as skipped with the same cause as the run without the flag,
  and no part;

and anything else is a failure: a traceback, more than one line, a hang, a signal, a part
from a bad chunk, a different result. The test asserts there is none and prints the counts.

CI skims a fixed seeded subset, `CI_PER_KIND` copies of every kind of damage (`ci_cases`);
the full set is marked slow and run by `make bench`.

``python tests/test_skim_fuzz.py CASE OUT.root`` writes one case's copy (names as in the
summary, ``flip_few-007``) for a by-hand repro.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gc
import json
import multiprocessing
import os
import random
import struct
import sys
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import uproot
from _skim_helpers import QUIET_COFFEA

from processors.profiles import readable_branches

pytestmark = QUIET_COFFEA

SEED = 20_260_601
CASE_TIMEOUT_S = 30.0  # per skim of one copy; a warm skim of the intact file takes about 1 s
PARALLEL = 2
DATASET = "DY"
META = {"process": "DY", "label": 0, "xsec_pb": 1.0}

# How many copies of each kind are drawn (230; the few zeroed ranges that held only zeros
# already are dropped, 219 are left).
COUNTS = {"flip_few": 45, "flip_many": 20, "truncate": 25, "truncate_consistent": 10,
          "basket_zero": 60, "basket_flip": 25, "header": 12, "directory": 10,
          "tree_meta": 13, "streamers": 10}
# CI's share: this many copies of each kind, drawn with SEED, so every kind of damage is skimmed.
CI_PER_KIND = 3
SIZES = [pytest.param(CI_PER_KIND, id=f"ci-{CI_PER_KIND}-per-kind"),
         pytest.param(None, id="full", marks=pytest.mark.slow)]


@dataclass
class Case:
    """One corrupted copy: byte patches applied to the intact file, then an optional truncation."""

    name: str
    patches: list[tuple[int, bytes]] = field(default_factory=list)
    truncate: int | None = None
    what: str = ""

    def apply(self, data: bytes) -> bytes:
        out = bytearray(data)
        for offset, chunk in self.patches:
            out[offset:offset + len(chunk)] = chunk
        if self.truncate is not None:
            del out[self.truncate:]
        return bytes(out)


def _layout(path: Path) -> dict:
    """Where the parts of the file lie: header, directory, keys, TTree, streamers, baskets."""
    with uproot.open(path) as file:
        f = file.file
        directory = f.root_directory
        tree = file["Events"]
        events_key = file.key("Events")
        wanted = readable_branches()
        data = path.read_bytes()
        baskets = []
        for branch in tree.branches:
            for i in range(branch.num_baskets):
                seek = int(branch.member("fBasketSeek")[i])
                nbytes = int(branch.member("fBasketBytes")[i])
                keylen = struct.unpack(">h", data[seek + 14:seek + 16])[0]
                read = any(fnmatch.fnmatchcase(branch.name, p) for p in wanted)
                baskets.append((branch.name, seek, nbytes, keylen, read))
        return {
            "size": len(data), "begin": f.fBEGIN, "end": f.fEND,
            "directory": (f.fBEGIN, f.fBEGIN + f.fNbytesName + 60),
            "keys": (directory.fSeekKeys, directory.fSeekKeys + directory.fNbytesKeys),
            "tree_key": (events_key.fSeekKey, events_key.fSeekKey + events_key.fKeylen),
            "tree_meta": (events_key.fSeekKey + events_key.fKeylen,
                          events_key.fSeekKey + events_key.fNbytes),
            "streamers": (f.fSeekInfo, f.fSeekInfo + f.fNbytesInfo),
            "baskets": baskets,
        }


def make_cases(path: Path, seed: int = SEED) -> list[Case]:
    """The corrupted copies, the same for the same file and seed."""
    data = path.read_bytes()
    lay = _layout(path)
    rng = random.Random(seed)
    size = lay["size"]
    cases: list[Case] = []

    def flip(name: str, lo: int, hi: int, n: int, what: str) -> None:
        patches = []
        for off in rng.sample(range(lo, hi), min(n, hi - lo)):
            patches.append((off, bytes([data[off] ^ rng.randrange(1, 256)])))
        cases.append(Case(name, patches, what=f"{what}: {len(patches)} byte(s) flipped in [{lo}, {hi})"))

    def zero(name: str, lo: int, hi: int, what: str) -> None:
        cases.append(Case(name, [(lo, bytes(hi - lo))], what=f"{what}: bytes [{lo}, {hi}) zeroed"))

    def region(name: str, span: tuple[int, int], what: str) -> None:
        lo, hi = span
        if rng.random() < 0.5:
            flip(name, lo, hi, rng.choice((1, 1, 2, 4)), what)
        else:
            start = rng.randrange(lo, hi)
            zero(name, start, min(hi, start + rng.choice((1, 2, 4, 8, 32))), what)

    for i in range(COUNTS["flip_few"]):
        flip(f"flip_few-{i:03d}", 0, size, rng.randint(1, 4), "anywhere")
    for i in range(COUNTS["flip_many"]):
        flip(f"flip_many-{i:03d}", 0, size, rng.choice((16, 64, 256, 1024, 4096)), "anywhere")
    for i in range(COUNTS["truncate"]):
        # Half anywhere, half within the last 6 kB (key list, streamers).
        length = rng.randrange(0, size) if i % 2 else rng.randrange(size - 6000, size)
        cases.append(Case(f"truncate-{i:03d}", truncate=length, what=f"truncated to {length} bytes"))
    for i in range(COUNTS["truncate_consistent"]):
        # A truncated file whose header's fEND says so: the header check cannot tell.
        length = rng.randrange(lay["begin"] + 100, size)
        cases.append(Case(f"truncate_consistent-{i:03d}", [(12, struct.pack(">i", length))],
                          truncate=length, what=f"truncated to {length} bytes, fEND set to match"))
    baskets = lay["baskets"]
    read = [b for b in baskets if b[4]]
    for i in range(COUNTS["basket_zero"]):
        name, seek, nbytes, keylen, _ = rng.choice(read if rng.random() < 0.7 else baskets)
        mode = rng.choice(("key", "payload", "payload", "whole"))
        if mode == "key":
            start = rng.randrange(seek, seek + keylen)
            lo, hi = start, min(seek + keylen, start + rng.choice((1, 2, 4, 8)))
        elif mode == "payload":
            start = rng.randrange(seek + keylen, seek + nbytes)
            lo, hi = start, min(seek + nbytes, start + rng.choice((1, 4, 16, 64, 512)))
        else:
            lo, hi = seek, seek + nbytes
        zero(f"basket_zero-{i:03d}", lo, hi, f"basket of {name} ({mode})")
    for i in range(COUNTS["basket_flip"]):
        name, seek, nbytes, keylen, _ = rng.choice(read)
        flip(f"basket_flip-{i:03d}", seek, seek + nbytes, rng.randint(1, 3), f"basket of {name}")
    for i in range(COUNTS["header"]):
        region(f"header-{i:03d}", (0, lay["begin"]), "file header")
    for i in range(COUNTS["directory"]):
        region(f"directory-{i:03d}", lay["directory"] if i % 2 else lay["keys"],
               "top directory" if i % 2 else "key list")
    for i in range(COUNTS["tree_meta"]):
        region(f"tree_meta-{i:03d}", lay["tree_key"] if i % 2 else lay["tree_meta"],
               "Events TKey" if i % 2 else "Events TTree metadata")
    for i in range(COUNTS["streamers"]):
        region(f"streamers-{i:03d}", lay["streamers"], "streamer record")
    # A zeroed range may have held zeros already: such a "copy" is the intact file.
    return [c for c in cases if c.apply(data) != data]


def kind_of(case: Case) -> str:
    return case.name.split("-")[0]


def ci_cases(cases: list[Case], per_kind: int, seed: int = SEED) -> list[Case]:
    """`per_kind` cases of each kind, drawn with ``seed``, in the order of ``cases``."""
    rng = random.Random(seed)
    chosen = set()
    for kind in COUNTS:
        names = [c.name for c in cases if kind_of(c) == kind]
        chosen.update(rng.sample(names, min(per_kind, len(names))))
    return [c for c in cases if c.name in chosen]


# --- running one skim in a forked child ---------------------------------------------------

def _fileset(path: Path, root: Path) -> Path:
    fileset = root / f"{path.stem}.fileset.json"
    fileset.write_text(json.dumps({DATASET: {"files": {str(path): "Events"}, "metadata": META}}))
    return fileset


def _child(argv: list[str], log: Path) -> None:
    """Body of a forked child: the CLI with stdout/stderr in files, as a real process would see it."""
    code = 99
    try:
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(f"{log}.{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        # Warnings print to stderr, as outside pytest (pytest records them in a list), and
        # deprecations stay hidden, as Python's default filters hide them.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        warnings.showwarning = lambda msg, cat, fn, ln, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(msg, cat, fn, ln, line))
        from analysis.cli import main
        try:
            main(argv)
            code = 0
        except SystemExit as err:
            code = err.code if isinstance(err.code, int) else 1
    except BaseException:  # noqa: BLE001 - what a real process would print and die of
        traceback.print_exc()
        code = 98
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


@dataclass
class Run:
    case: str
    mode: str  # "strict" or "skip"
    path: Path
    out: Path
    log: Path
    exitcode: int | None = None
    hung: bool = False
    seconds: float = 0.0

    @property
    def stdout(self) -> str:
        p = Path(f"{self.log}.stdout")
        return p.read_text(errors="replace") if p.exists() else ""

    @property
    def stderr(self) -> str:
        p = Path(f"{self.log}.stderr")
        return p.read_text(errors="replace") if p.exists() else ""


def run_all(runs: list[Run], fileset_of, *, parallel: int = PARALLEL,
            timeout: float = CASE_TIMEOUT_S, on_done=None) -> None:
    """Skim each run's copy in a forked child, `parallel` at a time, killing overrunners."""
    ctx = multiprocessing.get_context("fork")
    pending, active = list(runs), []
    while pending or active:
        while pending and len(active) < parallel:
            run = pending.pop(0)
            argv = ["skim", str(fileset_of(run)), "--out", str(run.out), "--executor", "iterative",
                    "--quiet", *(["--skip-bad-files"] if run.mode == "skip" else [])]
            proc = ctx.Process(target=_child, args=(argv, run.log), daemon=True)
            proc.start()
            active.append((proc, run, time.monotonic()))
        time.sleep(0.02)
        for entry in list(active):
            proc, run, start = entry
            if proc.is_alive() and time.monotonic() - start < timeout:
                continue
            if proc.is_alive():
                proc.kill()
                run.hung = True
            proc.join()
            run.exitcode = proc.exitcode
            run.seconds = time.monotonic() - start
            active.remove(entry)
            if on_done is not None:
                on_done(run)


# --- judging one run ------------------------------------------------------------------------

def _skim_result(out: Path) -> dict:
    """What must not change when the damage is in bytes the skim does not read."""
    manifest = json.loads((out / "manifest.json").read_text())
    [entry] = manifest["files"]
    parts = sorted(out.glob(f"{DATASET}/part-*.parquet"))
    table = pq.read_table(parts[0]) if len(parts) == 1 else None
    return {
        "cutflow": json.loads((out / "cutflow.json").read_text()),
        "datasets": manifest["datasets"], "complete": manifest["complete"],
        "file": {k: entry[k] for k in ("entries", "profile", "status", "error")},
        "chunks": [(c["start"], c["stop"], c["rows"]) for c in entry["chunks"]],
        "parts": len(parts),
        "table": None if table is None else (table.schema.remove_metadata(), table.to_pylist()),
    }


def _parts_written(out: Path) -> list[str]:
    return [p.name for p in out.rglob("*") if p.name.startswith(("part-", ".part-"))]


def judge(run: Run, reference: dict, strict_cause: dict[str, str]) -> tuple[str, str]:
    """(outcome, detail): outcome ``ok``, ``error``, ``skipped`` or ``FAIL:<why>``."""
    err, out = run.stderr, run.stdout
    lines = err.splitlines()
    if run.hung:
        return "FAIL:hang", f"killed after {CASE_TIMEOUT_S:.0f} s"
    if run.exitcode is None or run.exitcode < 0:
        return "FAIL:signal", f"exit {run.exitcode}"
    if "Traceback" in err or "Traceback" in out:
        tail = [ln for ln in lines if ln.strip()][-1:] or [""]
        return "FAIL:traceback", tail[0][:300]
    if out.strip():
        return "FAIL:stdout", out.strip().splitlines()[0][:300]
    if len(lines) != 1:
        return "FAIL:multi-line", " | ".join(lines)[:400]
    line = lines[0]
    manifest = run.out / "manifest.json"
    if run.exitcode == 0:
        if not line.startswith("skim: "):
            return "FAIL:stderr", line[:300]
        if not manifest.exists():
            return "FAIL:no-manifest", line
        data = json.loads(manifest.read_text())
        [entry] = data["files"]
        if entry["status"] == "skipped" and run.mode == "skip":
            expected = strict_cause.get(run.case)
            errors = data["errors"]
            if _parts_written(run.out):
                return "FAIL:part-from-bad-file", ", ".join(_parts_written(run.out))
            if [(e["path"], e["cause"]) for e in errors] != [(str(run.path), entry["error"])]:
                return "FAIL:manifest-errors", json.dumps(errors)[:300]
            if "1 bad file(s) skipped" not in line:
                return "FAIL:summary", line
            if expected is not None and entry["error"] != expected:
                return "FAIL:cause-differs", f"{entry['error']} != {expected}"[:400]
            return "skipped", entry["error"]
        try:
            result = _skim_result(run.out)
        except Exception as exc:  # noqa: BLE001
            return "FAIL:unreadable-skim", f"{type(exc).__name__}: {exc}"[:300]
        diff = [k for k in reference if result[k] != reference[k]]
        if diff:
            return "FAIL:wrong-result", f"differs in {', '.join(diff)}"
        return "ok", line
    if run.exitcode != 1:
        return "FAIL:exit-code", f"exit {run.exitcode}: {line[:300]}"
    prefix = f"hepprep: error: {run.path}: "
    if not line.startswith(prefix):
        return "FAIL:not-naming-file", line[:300]
    if _parts_written(run.out):
        return "FAIL:part-from-bad-file", ", ".join(_parts_written(run.out))
    if manifest.exists():
        data = json.loads(manifest.read_text())
        if data["complete"] or any(f["status"] == "done" for f in data["files"]):
            return "FAIL:manifest-done", json.dumps(data["files"])[:300]
    return "error", line.removeprefix(prefix)


# --- the test -------------------------------------------------------------------------------

def _cause_class(cause: str) -> str:
    """A short label for the summary: the cause without its numbers and file-specific text."""
    head = cause.split(" (")[0].split(":")[0]
    return "".join(c for c in head if not c.isdigit()).strip()[:60]


@pytest.fixture(scope="module")
def all_cases(nano_dy_path) -> list[Case]:
    """Every corrupted copy (`make_cases`: reading the layout costs seconds), shared read-only."""
    return make_cases(nano_dy_path)


def test_the_ci_subset_has_every_kind_of_damage_and_is_fixed(all_cases):
    subset = ci_cases(all_cases, CI_PER_KIND)
    assert Counter(kind_of(c) for c in subset) == {kind: CI_PER_KIND for kind in COUNTS}
    assert subset == ci_cases(list(all_cases), CI_PER_KIND)  # the same draw each time
    assert ci_cases(all_cases, max(COUNTS.values())) == all_cases  # the full form skims every copy


@pytest.mark.parametrize("per_kind", SIZES)
def test_corrupted_copies_end_as_the_intact_skim_or_one_line(nano_dy_path, all_cases, tmp_path, per_kind):
    from analysis.cli import main

    started = time.monotonic()
    intact = tmp_path / "intact.root"
    intact.write_bytes(nano_dy_path.read_bytes())
    # The reference skim, in this process: it also imports and warms up what the children use.
    with _no_exit():
        main(["skim", str(_fileset(intact, tmp_path)), "--out", str(tmp_path / "intact"),
              "--executor", "iterative", "--quiet"])
    reference = _skim_result(tmp_path / "intact")
    assert reference["file"]["status"] == "done" and reference["parts"] == 1

    data = nano_dy_path.read_bytes()
    cases = all_cases
    assert len(cases) >= 200 and len({c.name for c in cases}) == len(cases)
    if per_kind is not None:
        cases = ci_cases(cases, per_kind)
    assert {kind_of(c) for c in cases} == set(COUNTS)

    copies = tmp_path / "copies"
    copies.mkdir()
    (tmp_path / "logs").mkdir()

    def run_of(case: Case, mode: str) -> Run:
        return Run(case.name, mode, copies / f"{case.name}.root", tmp_path / "out" / mode / case.name,
                   tmp_path / "logs" / f"{case.name}.{mode}")

    for case in cases:
        run_of(case, "strict").path.write_bytes(case.apply(data))
        _fileset(run_of(case, "strict").path, copies)
    setup_s = time.monotonic() - started

    outcomes: dict[tuple[str, str], tuple[str, str]] = {}
    strict_cause: dict[str, str] = {}

    def on_done(run: Run) -> None:
        outcomes[run.case, run.mode] = judge(run, reference, strict_cause)

    def fileset_of(run: Run) -> Path:
        return copies / f"{run.path.stem}.fileset.json"

    # The children share the parent's memory copy-on-write; the collector of each child
    # would otherwise write to every object's header, copying most pages (a third slower).
    gc.freeze()
    try:
        # First as is; then with --skip-bad-files, every other copy that was not the intact
        # skim (where the flag matters: each kind of damage is among them) and every tenth
        # that was (where it must change nothing). Every copy would cost a minute more.
        runs = [run_of(case, "strict") for case in cases]
        run_all(runs, fileset_of, on_done=on_done)
        strict_cause.update({name: d for (name, _), (o, d) in outcomes.items() if o == "error"})
        erred = [case.name for case in cases if outcomes[case.name, "strict"][0] != "ok"]
        skip_runs = [run_of(case, "skip") for i, case in enumerate(cases)
                     if (case.name in erred and erred.index(case.name) % 2 == 0)
                     or (case.name not in erred and i % 10 == 0)]
        run_all(skip_runs, fileset_of, on_done=on_done)
        runs += skip_runs
    finally:
        gc.unfreeze()
    total_s = time.monotonic() - started

    by_case = {c.name: c for c in cases}
    # An ok without the flag must be an ok with it, an error a skip with the same cause.
    for run in skip_runs:
        strict, skip = outcomes[run.case, "strict"][0], outcomes[run.case, "skip"][0]
        if not strict.startswith("FAIL") and not skip.startswith("FAIL") and \
                (strict, skip) not in (("ok", "ok"), ("error", "skipped")):
            outcomes[run.case, "skip"] = ("FAIL:inconsistent", f"{strict} without the flag, {skip} with it")

    counts = Counter((mode, o[0]) for (_, mode), o in outcomes.items())
    kinds = Counter((kind_of(by_case[name]), outcomes[name, "strict"][0]) for name in by_case)
    causes = Counter(_cause_class(d) for (_, mode), (o, d) in outcomes.items()
                     if mode == "strict" and o == "error")
    failures = sorted((name, mode, o, d) for (name, mode), (o, d) in outcomes.items()
                      if o.startswith("FAIL"))
    slowest = max(runs, key=lambda r: r.seconds)
    report = [(f"fuzz: {len(cases)} corrupted copies, {len(runs)} skims in {total_s:.0f} s "
               f"(setup {setup_s:.0f} s; slowest run {slowest.seconds:.1f} s: {slowest.case} {slowest.mode})")]
    seconds: dict[tuple[str, str], float] = Counter()
    for run in runs:
        seconds[run.mode, outcomes[run.case, run.mode][0]] += run.seconds
    report += [f"  {mode:6} {outcome:24} {n:4}  ({seconds[mode, outcome] / n:.2f} s each)"
               for (mode, outcome), n in sorted(counts.items())]
    report += ["  by kind (without the flag):"]
    report += [f"    {kind:20} {outcome:24} {n}" for (kind, outcome), n in sorted(kinds.items())]
    report += ["  error causes:"] + [f"    {n:4} {c}" for c, n in causes.most_common()]
    report += [f"  {o} {name} [{mode}] ({by_case[name].what}): {d}" for name, mode, o, d in failures]
    report += [f"  logs: {tmp_path / 'logs'}"] if failures else []
    print("\n".join(report))
    assert not failures, "\n".join(report)
    # Each outcome is reached, so the judging of each is exercised (by the subset too).
    assert {o for (_, mode), (o, _) in outcomes.items()} == {"ok", "error", "skipped"}, "\n".join(report)


def test_the_harness_sees_hangs_tracebacks_and_stray_lines(tmp_path, monkeypatch):
    # The children run whatever analysis.cli.main is when they are forked.
    import analysis.cli

    behaviours = {
        "hang": lambda argv: time.sleep(60),
        "traceback": lambda argv: {}["no such key"],
        "two-lines": lambda argv: (print("hepprep: error: x: y", file=sys.stderr),
                                   print("and more", file=sys.stderr), sys.exit(1)),
        "signal": lambda argv: os.kill(os.getpid(), 9),
    }
    which = {}
    monkeypatch.setattr(analysis.cli, "main", lambda argv: behaviours[which["now"]](argv))
    outcomes = {}
    for name in behaviours:
        which["now"] = name
        run = Run(name, "strict", tmp_path / "x.root", tmp_path / name, tmp_path / name)
        run_all([run], lambda run: tmp_path / "fileset.json", timeout=2.0)
        outcomes[name] = judge(run, {}, {})[0]
    assert outcomes == {"hang": "FAIL:hang", "traceback": "FAIL:traceback",
                        "two-lines": "FAIL:multi-line", "signal": "FAIL:signal"}


def _wrongly_shaped_copy(source: Path, target: Path) -> None:
    """The skim's branches of `source`, rewritten with ``Tau_pt`` one float per event, not per tau."""
    import awkward as ak
    import numpy as np

    arrays = uproot.open(source)["Events"].arrays(filter_name=readable_branches(), how=dict)
    data, objects = {}, {}
    for name, values in arrays.items():
        head, _, tail = name.partition("_")
        if head in ("Tau", "Jet") and values.ndim == 2:
            objects.setdefault(head, {})[tail] = values
        elif name not in ("nTau", "nJet"):
            data[name] = values
    data["Jet"] = ak.zip(objects["Jet"])
    data["Tau"] = ak.zip({k: v for k, v in objects["Tau"].items() if k != "pt"})
    data["Tau_pt"] = np.linspace(10, 50, len(data["run"])).astype(np.float32)
    with uproot.recreate(target) as file:
        file.mktree("Events", {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in data.items()})
        file["Events"].extend(data)


def test_a_branch_of_the_wrong_shape_is_one_line_or_skipped(nano_dy_path, tmp_path, capsys):
    # NanoEvents cannot be built from it: coffea raised from its work function, past the
    # processor's own error handling, as a traceback even with --skip-bad-files.
    from analysis.cli import main

    bad = tmp_path / "wrong_shape.root"
    _wrongly_shaped_copy(nano_dy_path, bad)
    fileset = _fileset(bad, tmp_path)
    cause = "cannot read entries 0-40 of Events: cannot build its events (KeyError: 'content')"
    args = ["skim", str(fileset), "--executor", "iterative", "--quiet"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "strict")])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == f"hepprep: error: {bad}: {cause}\n"
    assert not _parts_written(tmp_path / "strict")

    main([*args, "--out", str(tmp_path / "skip"), "--skip-bad-files"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 bad file(s) skipped" in err, err
    manifest = json.loads((tmp_path / "skip" / "manifest.json").read_text())
    assert [(f["status"], f["error"]) for f in manifest["files"]] == [("skipped", cause)]
    assert manifest["errors"] == [{"dataset": DATASET, "path": str(bad), "cause": cause}]
    assert not _parts_written(tmp_path / "skip")


class _no_exit:
    """The CLI returns normally on success; fail the test on any exit."""

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is SystemExit:
            raise AssertionError(f"the intact file's skim exited with {value.code}")
        return False


if __name__ == "__main__":  # python tests/test_skim_fuzz.py CASE OUT.root
    from _cms_helpers import find_cms_fixtures

    source = find_cms_fixtures().nano_dy
    wanted, target = sys.argv[1], Path(sys.argv[2])
    [case] = [c for c in make_cases(source) if c.name == wanted]
    target.write_bytes(case.apply(source.read_bytes()))
    print(f"{target}: {case.name}: {case.what}")
