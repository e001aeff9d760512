"""Sample generator (generate stage): a batch of generated events as flat object tables.

Physics generators add objects in vectorised segments ("one tau per event of this mask",
"all ISR jets of all events") rather than event by event. `EventBuilder` collects those
segments per collection and hands back each segment's row numbers, so a tau can point at
its jet or its generator-level particle before anything is sorted. `EventBatch` is the
finished batch; batches of several processes can be merged and shuffled (pseudo-data).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from analysis.generate.layout import SCALARS, TABLES

__all__ = ["EventBatch", "EventBuilder", "concatenate_batches"]

_REF_FIELDS = {"jetIdx": "Jet", "genPartIdx": "GenPart", "genPartIdxMother": "GenPart"}


def _default(field: str):
    # Missing reference fields mean "no match" (-1); other missing fields are zero / False.
    return -1 if field in _REF_FIELDS else 0


@dataclass
class EventBatch:
    """Generated events: ``n`` events, per-event ``scalars`` and flat ``collections``.

    ``collections[name]["event"]`` is the event index (int64) of each row; ``jetIdx``,
    ``genPartIdx`` and ``genPartIdxMother`` hold row numbers of the Jet / GenPart table of
    the same batch (-1: none).
    """

    n: int
    scalars: dict[str, np.ndarray]
    collections: dict[str, dict[str, np.ndarray]]

    def drop_truth(self) -> EventBatch:
        """The batch as real data would look: no GenPart, no generator matching."""
        cols = dict(self.collections)
        cols["GenPart"] = {k: v[:0] for k, v in cols["GenPart"].items()}
        for name, table in cols.items():
            if "genPartIdx" in table:
                cols[name] = {**table, "genPartIdx": np.full_like(table["genPartIdx"], -1)}
        return EventBatch(self.n, dict(self.scalars), cols)

    def subset(self, keep: np.ndarray) -> EventBatch:
        """The events where ``keep`` (bool, per event) is true, with their objects;
        references to dropped rows cannot occur (objects only point inside their event)."""
        new_index = np.cumsum(keep) - 1
        scalars = {k: v[keep] for k, v in self.scalars.items()}
        row_maps, kept_rows = {}, {}
        for name, table in self.collections.items():
            rows = keep[table["event"]]
            kept_rows[name] = rows
            row_maps[name] = np.cumsum(rows) - 1
        cols = {}
        for name, table in self.collections.items():
            rows = kept_rows[name]
            new = {k: v[rows] for k, v in table.items()}
            new["event"] = new_index[new["event"]]
            for ref, target in _REF_FIELDS.items():
                if ref in new and len(row_maps[target]) == 0:
                    new[ref] = np.full_like(new[ref], -1)
                elif ref in new:
                    values = new[ref]
                    new[ref] = np.where(values >= 0, row_maps[target][np.maximum(values, 0)], -1).astype(values.dtype)
            cols[name] = new
        return EventBatch(int(keep.sum()), scalars, cols)

    def permute(self, perm: np.ndarray) -> EventBatch:
        """Reorder events: new event i is old event ``perm[i]``."""
        inverse = np.empty_like(perm)
        inverse[perm] = np.arange(len(perm))
        scalars = {k: v[perm] for k, v in self.scalars.items()}
        cols = {name: {**table, "event": inverse[table["event"]]} for name, table in self.collections.items()}
        return EventBatch(self.n, scalars, cols)


def concatenate_batches(batches: list[EventBatch]) -> EventBatch:
    """One batch holding the events of all `batches` in order (indices and references shifted)."""
    n = sum(b.n for b in batches)
    scalars = {k: np.concatenate([b.scalars[k] for b in batches]) for k in batches[0].scalars}
    cols: dict[str, dict[str, np.ndarray]] = {}
    for name in batches[0].collections:
        parts: dict[str, list[np.ndarray]] = {k: [] for k in batches[0].collections[name]}
        event_offset = 0
        row_offsets = {target: 0 for target in _REF_FIELDS.values()}
        for b in batches:
            table = b.collections[name]
            for k, values in table.items():
                if k == "event":
                    values = values + event_offset
                elif k in _REF_FIELDS:
                    values = np.where(values >= 0, values + row_offsets[_REF_FIELDS[k]], -1)
                parts[k].append(values)
            event_offset += b.n
            for target in row_offsets:
                row_offsets[target] += len(b.collections[target]["event"])
        cols[name] = {k: np.concatenate(v) for k, v in parts.items()}
    return EventBatch(n, scalars, cols)


@dataclass
class EventBuilder:
    """Collects object segments for ``n`` events; `build` gives the `EventBatch`.

    Example
    -------
    >>> b = EventBuilder(3)
    >>> jets = b.add("Jet", np.array([0, 2]), pt=np.array([40.0, 25.0]))
    >>> b.add("Tau", np.array([2]), pt=np.array([30.0]), jetIdx=jets[1:])
    array([0])
    """

    n: int
    layout: dict[str, dict[str, np.dtype]] = field(default_factory=lambda: TABLES)
    scalar_names: tuple[str, ...] = tuple(SCALARS)
    _segments: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)
    _rows: dict[str, int] = field(default_factory=dict)
    scalars: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, collection: str, event: np.ndarray, **fields: np.ndarray) -> np.ndarray:
        """Append objects (one per entry of ``event``); returns their row numbers."""
        unknown = set(fields) - set(self.layout[collection])
        if unknown:
            raise KeyError(f"{collection} has no field(s) {sorted(unknown)}; known: {list(self.layout[collection])}")
        event = np.asarray(event, dtype=np.int64)
        seg = {"event": event}
        for k, v in fields.items():
            seg[k] = np.broadcast_to(np.asarray(v), event.shape)
        start = self._rows.get(collection, 0)
        self._segments.setdefault(collection, []).append(seg)
        self._rows[collection] = start + len(event)
        return np.arange(start, start + len(event), dtype=np.int64)

    def build(self) -> EventBatch:
        cols: dict[str, dict[str, np.ndarray]] = {}
        for name, fields in self.layout.items():
            segs = self._segments.get(name, [])
            table = {"event": np.concatenate([s["event"] for s in segs]) if segs else np.zeros(0, np.int64)}
            for k, dtype in fields.items():
                parts = [s[k].astype(dtype, copy=False) if k in s else np.full(len(s["event"]), _default(k), dtype)
                         for s in segs]
                table[k] = np.concatenate(parts) if parts else np.zeros(0, dtype)
            cols[name] = table
        missing = set(self.scalar_names) - set(self.scalars)
        if missing:
            raise KeyError(f"event scalars not filled: {sorted(missing)}")
        return EventBatch(self.n, dict(self.scalars), cols)
