"""The taggers' loader (`analysis.train.jet_stream`): jets padded to N at load time, a mask, images.

A synthetic jet-level skim (`tests._jet_prepare_helpers`) is prepared with its constituent
lists standardised; the stream must give every training jet exactly once per epoch, its
first N constituents (by the prepared order, decreasing pt) in (B, N, F) with a mask that is
True exactly on the real ones, the jet's flat features, class and train_weight; images equal
`jet_images` on the constituents in physical units. The reference is a plain pyarrow read
padded by hand in the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from analysis import config_from_dict
from analysis.core.jet_images import jet_images
from analysis.prepare.runner import run_prepare
from analysis.train.jet_stream import _READ_BYTES, JetBatchStream, JetRowLayout
from analysis.train.stream import BatchLoader
from tests._jet_prepare_helpers import (
    CANDIDATE_COLUMNS,
    JET_CLASSES,
    VERTEX_COLUMNS,
    jet_samples,
    write_jet_skim,
)

CANDS = ("cand_deta", "cand_dphi", "cand_logpt", "cand_d0")
JETS = ("jet_pt", "jet_eta", "jet_mass")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jetstream")
    skim = write_jet_skim(root / "skim", jet_samples(0.5))
    config = config_from_dict({
        "features": list(JETS),
        "target": {"kind": "multiclass", "class_column": "jet_label", "classes": JET_CLASSES},
        "prepare": {"bucket_rows": 800, "file_rows": 600, "row_group_rows": 150,
                    "objects": {"constituent_features": [*CANDIDATE_COLUMNS, *VERTEX_COLUMNS]}},
        "cluster": {"n_workers": 1, "memory_limit": "2GiB"}})
    run_prepare(skim, root / "prep", config, progress=False)
    return root / "prep"


def _split(prepared: Path, name: str = "train") -> tuple[list[Path], dict]:
    return sorted((prepared / name).glob("*.parquet")), json.loads((prepared / "stats.json").read_text())


def _reference(files: list[Path], n: int) -> np.ndarray:
    """Each jet's row as the stream lays it out, from a pyarrow read and a loop over jets."""
    table = pq.read_table(files)
    rows = []
    for i in range(table.num_rows):
        lists = [np.asarray(table.column(c)[i].as_py(), dtype=np.float32) for c in CANDS]
        k = min(len(lists[0]), n)
        padded = np.zeros((n, len(CANDS)), dtype=np.float32)
        for j, values in enumerate(lists):
            padded[:k, j] = values[:k]
        flat = [table.column(c)[i].as_py() for c in (*JETS, "class", "train_weight")]
        rows.append(np.concatenate([padded.ravel(), [k], np.asarray(flat, dtype=np.float32)]))
    return np.asarray(rows, dtype=np.float32)


def _stream(files, stats, layout, **options) -> JetBatchStream:
    defaults = {"batch_size": 37, "shuffle_buffer": 300, "as_numpy": True, "targets": ("class",)}
    return JetBatchStream(files, layout, stats=stats, **(defaults | options))


def _rows(stream) -> np.ndarray:
    return np.concatenate([np.column_stack([x, y, w]) for x, y, w in stream])


def _sorted(rows: np.ndarray) -> np.ndarray:
    rows = np.nan_to_num(rows, nan=-1234.0)
    return rows[np.lexsort(rows.T[::-1])]


@pytest.mark.parametrize("n", [7, 80])  # truncating most jets; padding every jet
def test_in_order_rows_are_the_padded_lists_and_the_mask_the_real_constituents(prepared, n):
    files, stats = _split(prepared)
    layout = JetRowLayout(n, CANDS, JETS)
    rows = _rows(_stream(files, stats, layout, shuffle=False))
    expected = _reference(files, n)
    np.testing.assert_array_equal(np.isnan(rows), np.isnan(expected))
    np.testing.assert_array_equal(np.nan_to_num(rows), np.nan_to_num(expected))
    parts = layout.unpack(rows)
    counts = expected[:, n * len(CANDS)]
    assert parts["constituents"].shape == (len(rows), n, len(CANDS))
    np.testing.assert_array_equal(parts["mask"].sum(axis=1), counts)
    assert not parts["constituents"][~parts["mask"]].any()  # padded slots hold 0
    np.testing.assert_array_equal(parts["jets"], expected[:, n * len(CANDS) + 1:-2])
    assert (counts == n).any() and (counts < n).any() if n == 7 else (counts < n).all()


def test_shuffled_epochs_give_every_jet_once_in_another_order(prepared):
    files, stats = _split(prepared)
    layout = JetRowLayout(16, CANDS, JETS)
    stream = _stream(files, stats, layout, seed=3)
    epochs = []
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        epochs.append(_rows(stream))
    expected = _reference(files, 16)
    for rows in epochs:
        np.testing.assert_array_equal(_sorted(rows), _sorted(expected))
    assert not np.array_equal(np.nan_to_num(epochs[0]), np.nan_to_num(epochs[1]))
    assert stream.last_peak_rows <= 300
    again = _stream(files, stats, layout, seed=3)
    again.set_epoch(1)
    np.testing.assert_array_equal(np.nan_to_num(_rows(again)), np.nan_to_num(epochs[1]))  # seeded


def test_dataloader_workers_give_the_same_jets_as_tensors(prepared):
    torch = pytest.importorskip("torch")
    files, stats = _split(prepared, "val")
    layout = JetRowLayout(12, CANDS, JETS)
    loader = BatchLoader(_stream(files, stats, layout), num_workers=2)
    batches = list(loader)
    x = batches[0][0]
    assert isinstance(x, torch.Tensor) and x.shape[1] == layout.width
    assert layout.unpack(x)["mask"].dtype == torch.bool
    rows = np.concatenate([torch.column_stack([x, y, w]).numpy() for x, y, w in batches])
    np.testing.assert_array_equal(_sorted(rows), _sorted(_reference(files, 12)))


def test_image_rows_equal_jet_images_of_the_constituents_in_physical_units(prepared):
    files, stats = _split(prepared, "test")
    layout = JetRowLayout(0, (), ("jet_pt",), channels=("all",))
    rows = _rows(_stream(files, stats, layout, shuffle=False))
    table = pq.read_table(files)
    constituents = stats["constituents"]["features"]

    def raw(name):
        mean, std = constituents[name]["mean"], constituents[name]["std"]
        return [np.asarray(v, dtype=np.float64) * std + mean for v in table.column(name).to_pylist()]

    deta, dphi, pt = raw("cand_deta"), raw("cand_dphi"), raw("cand_pt")
    expected = jet_images(deta, dphi, pt, [np.zeros(len(v)) for v in pt], channels={"all": (0,)})
    images = layout.unpack(rows)["images"]
    assert images.shape == (table.num_rows, 1, 40, 40)
    np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(layout.unpack(rows)["jets"][:, 0], table.column("jet_pt").to_numpy().astype(np.float32))


def test_read_blocks_are_bounded_in_bytes(prepared):
    files, stats = _split(prepared)
    layout = JetRowLayout(2000, CANDS, ())  # 8000 floats a jet: the byte bound, not the row count, decides
    stream = _stream(files, stats, layout)
    blocks = list(stream._read(stream.units, 100_000, threads=False))
    assert max(b.nbytes for b in blocks) <= _READ_BYTES
    assert sum(len(b) for b in blocks) == stream.rows


def test_workers_inherit_the_padding_kernel_compiled_before_they_fork(prepared):
    """numba's first call costs a second or two: made once in the training process, not in every
    worker every epoch (a fresh interpreter, so no earlier test has compiled it)."""
    import subprocess
    import sys

    code = f"""
import json, sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from analysis.core import padding
from analysis.train.jet_stream import JetBatchStream, JetRowLayout
from analysis.train.stream import BatchLoader
prep = Path({str(prepared)!r})
files = sorted((prep / "train").glob("*.parquet"))
stream = JetBatchStream(files, JetRowLayout(8, {CANDS!r}, {JETS!r}), stats=json.loads((prep / "stats.json").read_text()),
                        batch_size=37, shuffle_buffer=300, as_numpy=True, targets=("class",))
assert not padding._pad_jets.signatures
BatchLoader(stream, num_workers=0)
assert not padding._pad_jets.signatures  # no workers: nothing compiled ahead
BatchLoader(stream, num_workers=2)
print(len(padding._pad_jets.signatures))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) >= 1
