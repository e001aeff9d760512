"""Jet-level data, piece by piece: several rows per event and list columns in a part, the constituent
links and features, the generator truth, and jet images — on hand-built arrays with hand-worked answers.

The end-to-end checks on the real PFNano file are in tests/test_jets.py.
"""

from __future__ import annotations

import math

import awkward as ak
import numpy as np
import pyarrow as pa
import pytest

from analysis.core.jet_images import DEFAULT_CHANNELS, PARTICLE_CLASSES, jet_images, list_offsets
from analysis.errors import HepprepError
from processors.base import Cutflow
from processors.constituents import LinkError, constituent_features, global_index, link_rows, particle_class
from processors.jet_truth import HBB, QCD, TBQQ, VQQ, decay_quarks, flavour_label, resonance_labels, response_target
from processors.parts import ROW_EVENT, rows_table

BOOKKEEPING = {"run": np.array([1, 1, 1]), "luminosityBlock": np.array([7, 7, 8]), "event": np.array([10, 11, 12]),
               "genWeight": np.array([1.0, -1.0, 2.0], dtype=np.float32), "weight": np.array([0.5, -0.5, 1.0])}


def _table(rows, columns=None, bookkeeping=BOOKKEEPING):
    return rows_table(rows, bookkeeping, dataset="QCD", process="QCD", label=0, columns=columns or {}, owner="jets")


# -- the contract: several rows per event, list columns ----------------------------------------------------------

def test_rows_of_objects_repeat_their_events_bookkeeping():
    lists = ak.Array([[1.0, 2.0], [], [3.0], [4.0, 5.0, 6.0]])
    table = _table({ROW_EVENT: np.array([0, 0, 1, 2]), "jet_index": np.array([0, 2, 0, 1]), "cand_pt": lists},
                   {"jet_index": "int16", "cand_pt": "list<float32>"})
    assert table.column_names == ["run", "luminosityBlock", "event", "dataset", "process", "label", "genWeight",
                                  "weight", "jet_index", "cand_pt"]  # the reserved column is not written
    assert table.column("event").to_pylist() == [10, 10, 11, 12]
    assert table.column("weight").to_pylist() == [0.5, 0.5, -0.5, 1.0]  # each jet carries its event's weight
    assert table.column("genWeight").to_pylist() == [1.0, 1.0, -1.0, 2.0]
    assert str(table.schema.field("cand_pt").type) == "list<item: float>"
    assert table.column("cand_pt").to_pylist() == [[1.0, 2.0], [], [3.0], [4.0, 5.0, 6.0]]
    assert str(table.schema.field("jet_index").type) == "int16"


def test_one_row_per_event_is_unchanged_and_lists_are_typed_from_their_values():
    table = _table({"x": np.array([1.0, 2.0, 3.0]), "hits": ak.Array([[1, 2], [3], []]),
                    "sliced": ak.Array([[0.0, 9.0], [1.0], [2.0, 3.0]])[:, 1:]})
    assert table.column("event").to_pylist() == [10, 11, 12]
    assert str(table.schema.field("hits").type) == "list<item: int32>"
    assert table.column("sliced").to_pylist() == [[9.0], [], [3.0]]  # a list-offset layout not from 0


@pytest.mark.parametrize(("event", "why"), [
    (np.array([1, 0, 2]), "non-decreasing positions among the 3 selected events"),
    (np.array([0, 1, 3]), "non-decreasing positions among the 3 selected events"),
    (np.array([0, 0, 2]), "1 selected event(s) have no row (the first at position 1)"),
    (np.array([0.0, 1.0, 2.0]), "must be a 1-d integer array"),
])
def test_a_bad_row_event_map_is_the_processors_error(event, why):
    with pytest.raises(HepprepError, match=f"processor jets: .*{why.replace('(', '.').replace(')', '.')}"):
        _table({ROW_EVENT: event, "x": np.arange(len(event), dtype=np.float32)})


def test_declared_and_returned_shapes_must_agree():
    with pytest.raises(HepprepError, match=r"column 'x' is declared list<float32> but holds one value per row"):
        _table({"x": np.ones(3)}, {"x": "list<float32>"})
    with pytest.raises(HepprepError, match=r"column 'x' is declared float32 but holds a list per row"):
        _table({"x": ak.Array([[1.0], [], []])}, {"x": "float32"})
    with pytest.raises(HepprepError, match=r"column 'x' has 2 lists, expected one value for each of the 4 rows"):
        _table({ROW_EVENT: np.array([0, 1, 2, 2]), "x": ak.Array([[1.0], []])})
    with pytest.raises(HepprepError, match=r"not one value \(or one list of numbers\) per row"):
        _table({"x": ak.Array([[[1.0]], [], []])})


def test_cutflow_counts_add_up_in_the_notes():
    cutflow = Cutflow(np.ones(4))
    cutflow.count("jets_without_constituents", 2)
    cutflow.count("jets_without_constituents", np.int64(1))
    assert cutflow.notes == {"counts": {"jets_without_constituents": 3}}


# -- constituents ---------------------------------------------------------------------------------------------------

def test_particle_classes_follow_the_pdg_id():
    assert particle_class(np.array([-211, 22, 130, 13, 1, 2, -11, 321])).tolist() == [0, 2, 1, 4, 1, 2, 3, -1]
    assert PARTICLE_CLASSES[2] == "photon"


def test_links_become_flat_positions_and_out_of_range_is_named():
    # two events: 3 and 2 candidates; the links hold local indices
    assert global_index([2, 1], np.array([2, 0, 1]), [3, 2], branch="b", target="PFCands").tolist() == [2, 0, 4]
    with pytest.raises(LinkError, match=r"^b = 2 at entry 11 is out of range \(the entry has 2 PFCands\); 1 such"):
        global_index([1, 1], np.array([0, 2]), [3, 2], branch="b", target="PFCands", first_entry=10)
    with pytest.raises(LinkError, match=r"b = -1 at entry 0"):
        global_index([1], np.array([-1]), [3], branch="b", target="PFCands")
    # events without links before the first bad index, which is named; every bad one is counted
    with pytest.raises(LinkError, match=r"^b = 5 at event 3 of the chunk .*has 4 PFCands\); 2 such"):
        global_index([1, 0, 0, 2, 1], np.array([0, 1, 5, 9]), [1, 0, 0, 4, 2], branch="b", target="PFCands",
                     first_entry=None)
    assert global_index([0, 0], np.array([], dtype=np.int64), [3, 1], branch="b", target="PFCands").tolist() == []


def test_link_rows_group_the_selected_jets_entries_by_decreasing_key():
    # jets 0..3 (flat), rows: jet 1 -> row 0, jet 3 -> row 1, jets 0 and 2 not selected
    row_of_jet = np.array([-1, 0, -1, 1])
    jet_of_link = np.array([1, 0, 3, 1, 1, 2])
    key = np.array([5.0, 9.0, 1.0, 7.0, 5.0, 3.0])
    entries, offsets = link_rows(jet_of_link, row_of_jet, 2, key)
    assert entries.tolist() == [3, 0, 4, 2] and offsets.tolist() == [0, 3, 4]  # equal keys keep link order
    entries, offsets = link_rows(jet_of_link, np.array([-1, -1, 0, -1]), 1)
    assert entries.tolist() == [5] and offsets.tolist() == [0, 1]
    # jet 0 -> row 0 (link 1), jet 1 -> row 1 (links 0, 3, 4 with keys 1, 2, NaN)
    entries, offsets = link_rows(jet_of_link, np.array([0, 1, -1, -1]), 2, np.array([1.0, 0.5, 0, 2.0, np.nan, 0]))
    assert entries.tolist() == [1, 3, 0, 4] and offsets.tolist() == [0, 1, 4]  # NaN last


def _lexsort_link_rows(jet_of_link, row_of_jet, n_rows, key):
    """link_rows as first written: one np.lexsort by (row, decreasing key, NaN last)."""
    row = row_of_jet[jet_of_link]
    kept = np.flatnonzero(row >= 0)
    k = key[kept]
    entries = kept[np.lexsort((np.where(np.isnan(k), np.inf, -k), row[kept]))]
    return entries, np.concatenate([[0], np.cumsum(np.bincount(row[entries], minlength=n_rows))])


@pytest.mark.parametrize("keys", ["continuous", "ties, signed zeros, NaN and infinities", "near ties"])
def test_link_rows_order_as_lexsort_on_shuffled_tables(keys):
    rng = np.random.default_rng(len(keys))
    for _ in range(200):
        n_jets, n_links = (int(rng.integers(1, 60)) if _ else 100_000), int(rng.integers(0, 500))
        row_of_jet = np.full(n_jets, -1)
        chosen = np.flatnonzero(rng.random(n_jets) < 0.7)
        row_of_jet[chosen] = np.arange(len(chosen))  # rows 0..n_rows-1; the first table has above 2^16
        jet_of_link = rng.integers(0, n_jets, n_links)  # a jet's entries scattered over the table
        if keys == "continuous":
            key = rng.exponential(20.0, n_links)
        elif keys == "near ties":  # a few units in the last place apart: every bit of the key decides
            key = 1.0 + rng.integers(0, 4, n_links) * 2.0**-50
        else:
            key = rng.choice([0.0, -0.0, 1.0, 2.5, np.nan, np.inf, -np.inf, -3.0], n_links)
        got = link_rows(jet_of_link, row_of_jet, len(chosen), key)
        want = _lexsort_link_rows(jet_of_link, row_of_jet, len(chosen), key)
        assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()


def _one_jet_features(weighted=False, **overrides):
    inputs = dict(pt=np.array([60.0, 30.0]), eta=np.array([0.1, -0.2]), phi=np.array([0.2, -3.1]),
                  mass=np.array([0.0, 0.0]), charge=np.array([1, 0]), pdg_id=np.array([211, 130]),
                  d0=np.array([0.01, -1.0]), d0_err=np.array([0.005, -1.0]), dz=np.array([-0.02, -1.0]),
                  dz_err=np.array([0.01, -1.0]), puppi_weight=np.array([0.5, 1.0]),
                  jet_pt=np.array([100.0, 100.0]), jet_eta=np.array([0.0, 0.0]), jet_phi=np.array([3.1, 3.1]),
                  jet_energy=np.array([100.0, 100.0]))
    inputs.update(overrides)
    return constituent_features(weighted=weighted, **inputs)


def test_constituent_features_by_hand():
    f = _one_jet_features()
    dphi0 = 0.2 - 3.1  # -2.9: inside (-pi, pi]
    dphi1 = -3.1 - 3.1 + 2 * math.pi  # -6.2 wrapped: 0.0831853...
    np.testing.assert_allclose(f["cand_deta"], [0.1, -0.2])
    np.testing.assert_allclose(f["cand_dphi"], [dphi0, dphi1])
    np.testing.assert_allclose(f["cand_dr"], [math.hypot(0.1, dphi0), math.hypot(0.2, dphi1)])
    np.testing.assert_allclose(f["cand_pt"], [60.0, 30.0])
    np.testing.assert_allclose(f["cand_logpt"], [math.log(60.0), math.log(30.0)])
    # massless: E = pt cosh(eta)
    np.testing.assert_allclose(f["cand_loge"], [math.log(60 * math.cosh(0.1)), math.log(30 * math.cosh(0.2))])
    np.testing.assert_allclose(f["cand_ptrel"], [0.6, 0.3])
    np.testing.assert_allclose(f["cand_erel"], [0.6 * math.cosh(0.1), 0.3 * math.cosh(0.2)])
    assert f["cand_charge"].tolist() == [1.0, 0.0] and f["cand_class"].tolist() == [0.0, 1.0]
    # the neutral has no track: PFNano's -1 become 0
    np.testing.assert_allclose(f["cand_d0"], [0.01, 0.0])
    np.testing.assert_allclose(f["cand_d0sig"], [2.0, 0.0])
    np.testing.assert_allclose(f["cand_dz"], [-0.02, 0.0])
    np.testing.assert_allclose(f["cand_dzsig"], [-2.0, 0.0])
    assert f["cand_puppiw"].tolist() == [0.5, 1.0]


def test_puppi_weighting_scales_the_four_momentum_only():
    f = _one_jet_features(weighted=True, mass=np.array([0.14, 0.0]))
    np.testing.assert_allclose(f["cand_pt"], [30.0, 30.0])
    np.testing.assert_allclose(f["cand_ptrel"], [0.3, 0.3])
    e0 = math.sqrt((60 * math.cosh(0.1)) ** 2 + 0.14**2) * 0.5
    np.testing.assert_allclose(f["cand_loge"][0], math.log(e0))
    np.testing.assert_allclose(f["cand_deta"], [0.1, -0.2])  # directions do not change
    assert f["cand_puppiw"].tolist() == [0.5, 1.0]


def test_candidates_and_jets_looked_up_by_index_equal_the_gathered_arrays():
    rng = np.random.default_rng(5)
    n_cands, n_jets, n = 50, 4, 120
    cands = dict(pt=rng.exponential(10, n_cands).astype(np.float32), eta=rng.normal(0, 2, n_cands).astype(np.float32),
                 phi=rng.uniform(-np.pi, np.pi, n_cands).astype(np.float32),
                 mass=rng.choice([0.0, 0.14], n_cands).astype(np.float32), charge=rng.integers(-1, 2, n_cands),
                 pdg_id=rng.choice([211, -211, 130, 22, 11, -13, 1, 2, 321, 0], n_cands).astype(np.int32),
                 d0=rng.normal(0, 0.1, n_cands).astype(np.float32),
                 d0_err=rng.choice([-1.0, 0.0, 0.01], n_cands).astype(np.float32),
                 dz=rng.normal(0, 0.1, n_cands).astype(np.float32),
                 dz_err=rng.choice([-1.0, 0.02], n_cands).astype(np.float32),
                 puppi_weight=rng.choice([0.0, 0.3, 1.0], n_cands).astype(np.float32))
    jets = dict(jet_pt=np.array([100.0, 0.0, 50.0, 300.0], np.float32), jet_eta=rng.normal(0, 1, n_jets),
                jet_phi=np.array([np.pi, -np.pi, 3.0, -3.0]), jet_energy=np.array([200.0, 10.0, 0.0, 400.0]))
    candidate, jet = rng.integers(0, n_cands, n), rng.integers(0, n_jets, n)
    for weighted in (False, True):
        looked_up = constituent_features(**cands, **jets, weighted=weighted, candidate=candidate, jet=jet)
        with np.errstate(divide="ignore", invalid="ignore"):
            gathered = constituent_features(**{k: v[candidate] for k, v in cands.items()},
                                            **{k: v[jet] for k, v in jets.items()}, weighted=weighted)
        for name, values in gathered.items():
            assert values.dtype == np.float32 and len(values) == n
            np.testing.assert_array_equal(looked_up[name], values, err_msg=name)
        # a jet pt or energy of 0 gives inf or nan, a PUPPI weight of 0 a log of -inf: no error
        pt = cands["pt"][candidate] * (cands["puppi_weight"][candidate] if weighted else 1)
        assert np.isinf(looked_up["cand_ptrel"][(jet == 1) & (pt > 0)]).all()
        assert np.isnan(looked_up["cand_ptrel"][(jet == 1) & (pt == 0)]).all()
        assert np.isneginf(looked_up["cand_logpt"][pt == 0]).all() and (pt == 0).any() == weighted
    assert set(np.unique(looked_up["cand_class"])) <= {-1.0, 0.0, 1.0, 2.0, 3.0, 4.0}
    with pytest.raises(ValueError, match="3 candidates for 2 jets"):
        constituent_features(**cands, **jets, weighted=False, candidate=np.arange(3), jet=np.arange(2))


# -- truth --------------------------------------------------------------------------------------------------------

def test_ak4_labels_and_the_response_target():
    assert flavour_label(np.array([0, 4, 5, 0])).tolist() == [0, 1, 2, 0]
    target = response_target(np.array([50.0, 40.0, 20.0]), np.array([1, -1, 0]), np.array([30.0, 45.0]))
    np.testing.assert_allclose(target, [0.9, np.nan, 1.5])


# Event 0: t -> t(copy) -> W+ b, W+ -> W+(copy) -> u dbar; event 1: H -> b bbar, and Z -> nu nu;
# event 2: H -> c cbar, W- -> mu nu. (pdgId, mother, eta, phi)
GEN = [
    [(21, -1, 0.0, 0.0), (6, -1, 0.0, 0.0), (6, 1, 0.0, 0.0), (24, 2, 0.2, 0.1), (5, 2, -0.3, 0.0),
     (24, 3, 0.2, 0.1), (2, 5, 0.3, 0.3), (-1, 5, 0.1, -0.1)],
    [(25, -1, 1.0, 2.0), (5, 0, 1.2, 2.1), (-5, 0, 0.9, 1.8), (23, -1, -1.0, -2.0), (12, 3, -1.0, -2.0),
     (-12, 3, -1.1, -2.0)],
    [(25, -1, 0.0, 0.0), (4, 0, 0.1, 0.0), (-4, 0, -0.1, 0.0), (-24, -1, 2.0, 0.0), (13, 3, 2.0, 0.0),
     (-14, 3, 2.1, 0.0)],
]


def _gen():
    flat = [p for event in GEN for p in event]
    return (np.array([len(e) for e in GEN]), np.array([p[0] for p in flat]), np.array([p[1] for p in flat]),
            np.array([p[2] for p in flat]), np.array([p[3] for p in flat]))


def test_decay_quarks_follow_copies_and_give_a_tops_w_quarks_to_both():
    counts, pdg, mother, _, _ = _gen()
    quark, owner, kind = decay_quarks(counts, pdg, mother)
    # event 0: b (4) of the top copy (2); u (6), dbar (7) of the W copy (5) and of the top (2)
    # event 1: b (9), bbar (10) of the H (8); event 2: c (15), cbar (16) of the H (14)
    assert list(zip(quark.tolist(), owner.tolist(), kind.tolist())) == [
        (4, 2, 6), (6, 5, 24), (6, 2, 6), (7, 5, 24), (7, 2, 6), (9, 8, 25), (10, 8, 25), (15, 14, 25),
        (16, 14, 25)]


def test_ak8_labels_need_every_quark_of_the_decay_inside():
    counts, pdg, mother, eta, phi = _gen()
    jet_event = np.array([0, 0, 0, 1, 1, 2])
    jet_eta = np.array([0.0, 0.6, 3.0, 1.0, -1.0, 0.0])
    jet_phi = np.array([0.0, 0.4, 0.0, 2.0, -2.0, 0.0])
    # jet 0: b, u, dbar at dR 0.30, 0.42, 0.14 -> t->bqq; jet 1: b at 0.98 (out), u at 0.32, dbar at 0.71 -> the
    # top's W; jet 3: b, bbar at 0.22 each -> H->bb; Z->nunu (jet 4), H->cc (jet 5) and W->munu give no label
    labels = resonance_labels(counts, pdg, mother, eta, phi, jet_event, jet_eta, jet_phi, dr_max=0.8)
    assert labels.tolist() == [TBQQ, VQQ, QCD, HBB, QCD, QCD]
    assert resonance_labels(counts, pdg, mother, eta, phi, jet_event, jet_eta, jet_phi, dr_max=0.2).tolist() == [
        QCD] * 6
    with pytest.raises(LinkError, match="GenPart_genPartIdxMother = 9 at entry 5"):
        resonance_labels(np.array([2]), np.array([25, 5]), np.array([-1, 9]), np.zeros(2), np.zeros(2),
                         np.array([0]), np.zeros(1), np.zeros(1), dr_max=0.8, first_entry=5)


# -- images ---------------------------------------------------------------------------------------------------------

def test_images_put_each_constituents_pt_in_its_pixel_and_channels():
    deta = [[0.0, 0.011, -0.39, 0.4, 0.1], [0.05]]
    dphi = [[0.0, -0.021, 0.39, 0.0, -0.41], [-0.05]]
    pt = [[10.0, 3.0, 2.0, 7.0, 5.0], [4.0]]
    cls = [[0, 2, 1, 4, 3], [3]]
    images = jet_images(deta, dphi, pt, cls)
    assert images.shape == (2, len(DEFAULT_CHANNELS), 40, 40) and images.dtype == np.float32
    channel = {name: k for k, name in enumerate(DEFAULT_CHANNELS)}
    # (0, 0) -> row 20, col 20; (0.011, -0.021) -> col 20, row 18; (-0.39, 0.39) -> col 0, row 39;
    # deta 0.4 is on the upper edge (outside), dphi -0.41 below the lower one (outside)
    first = images[0, channel["all"]]
    assert first[20, 20] == 10.0 and first[18, 20] == 3.0 and first[39, 0] == 2.0
    assert first.sum() == 15.0
    assert images[0, channel["photon"]].sum() == 3.0 and images[0, channel["neutral_hadron"]].sum() == 2.0
    assert images[0, channel["charged_hadron"]].sum() == 10.0 and images[0, channel["track"]].sum() == 10.0
    assert images[1, channel["track"], 17, 22] == 4.0 and images[1, channel["all"]].sum() == 4.0


def test_rotation_points_the_given_direction_up_and_keeps_the_pt_inside():
    # one constituent along the subjet direction (0.1, 0.1): rotated to (0, 0.1414) -> row 27, col 20
    images = jet_images([[0.1, -0.1]], [[0.1, 0.1]], [[5.0, 1.0]], [[0, 0]], rotate_to=[[0.1, 0.1]])
    assert images[0, 0, 27, 20] == 5.0
    # (-0.1, 0.1) is at 90 degrees to the left of the direction: (-0.1414, 0) -> row 20, col 12
    assert images[0, 0, 20, 12] == 1.0
    same = jet_images([[0.1]], [[0.2]], [[1.0]], [[0]], rotate_to=[[np.nan, np.nan]])
    np.testing.assert_array_equal(same, jet_images([[0.1]], [[0.2]], [[1.0]], [[0]]))


def test_images_take_parquet_list_columns_and_awkward_arrays():
    lists = pa.array([[0.0, 0.1], [], [0.2]], type=pa.list_(pa.float32()))
    offsets, values = list_offsets(lists)
    assert offsets.tolist() == [0, 2, 2, 3] and values.tolist() == pytest.approx([0.0, 0.1, 0.2])
    from_arrow = jet_images(lists, lists, pa.array([[1.0, 2.0], [], [3.0]]), pa.array([[0, 1], [], [2]]))
    from_awkward = jet_images(ak.Array([[0.0, 0.1], [], [0.2]]), ak.Array([[0.0, 0.1], [], [0.2]]),
                              ak.Array([[1.0, 2.0], [], [3.0]]), ak.Array([[0, 1], [], [2]]))
    np.testing.assert_array_equal(from_arrow, from_awkward)
    assert from_arrow[1].sum() == 0.0  # a jet without constituents: an empty image
