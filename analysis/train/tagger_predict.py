"""Training stage (prediction of the taggers): a pfn / part / cnn model directory read back and applied to jets.

`analysis.train.predict.load_model` calls `load_tagger` for these kinds: the layout (N,
constituent features, jet features, image channels) and the network's settings come from
model_info.json, the standardisation from the model's stats.json, the weights from model.pt
(a state dict). `tagger_outputs` lays a table's jets out with the training loader's own code
(`analysis.train.jet_stream.fill_jet_rows`), a block of jets at a time, so memory stays
bounded whatever the table's size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from analysis.core.jet_tables import StandardisedColumns, mapped_lists
from analysis.errors import StageInputError
from analysis.train.jet_stream import JetRowLayout, fill_jet_rows, image_columns
from analysis.train.model_dir import MODEL_INFO, load_network_state

__all__ = ["load_tagger", "tagger_input_columns", "tagger_outputs"]

_PREDICT_BYTES = 64 << 20  # float32 rows of one forward pass at most


def load_tagger(path: Path, info: dict, stats: dict, retrain: str) -> tuple[Any, JetRowLayout]:
    """The network (eval mode, CPU) and the row layout of a tagger's model directory."""
    from analysis.train.taggers import build_tagger

    try:
        record, params = info["layout"], info["params"]
        layout = JetRowLayout(int(record["constituents"]), tuple(record["constituent_features"]),
                              tuple(record["jet_features"]), tuple(record["image_channels"]))
        net = build_tagger(info["model"], layout, params["network"], int(info["n_outputs"]),
                           stats.get("constituents"))
    except (TypeError, KeyError, ValueError) as err:
        raise StageInputError(f"{path / MODEL_INFO}: no usable {info.get('model')} network "
                              f"(layout, params.network: {err}){retrain}") from None
    return load_network_state(net, path, retrain), layout


def tagger_input_columns(layout: JetRowLayout, stats: dict, *, rotate: bool) -> list[str]:
    """The prepared columns a tagger reads: its lists (or the images' lists) and its jet features."""
    if layout.images:
        lists = [c for c in (stats.get("constituents") or {}).get("feature_order", []) if c.startswith("cand_")]
        return list(dict.fromkeys([*image_columns(lists, rotate=rotate, source="stats.json"),
                                   *layout.jet_features]))
    return [*layout.constituent_features, *layout.jet_features]


def _table(table: Any, columns: list[str], where: Path) -> pa.Table:
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    elif not isinstance(table, pa.Table):
        if not hasattr(table, "columns"):
            raise StageInputError(f"predict: expected a pandas DataFrame or pyarrow Table, got {type(table).__name__}")
        table = pa.Table.from_pandas(table[[c for c in columns if c in table.columns]], preserve_index=False)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise StageInputError(f"predict: the table lacks columns {', '.join(missing)} that the model in "
                              f"{where} reads (constituent lists and jet features)")
    return table.select(columns)


def _standardise(table: pa.Table, columns: StandardisedColumns) -> pa.Table:
    """Raw skim columns standardised as prepare did (flat and list columns alike)."""
    out = {}
    for name in table.column_names:
        undo = columns.standardised.get(name)
        column = table.column(name).combine_chunks()
        if undo is not None:
            standardisation, j = undo
            if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
                column = mapped_lists(column, lambda flat, s=standardisation, j=j: s.transform_column(j, flat))
            else:
                column = pa.array(standardisation.transform_column(j, column.to_numpy(zero_copy_only=False)))
        out[name] = column
    return pa.table(out)


def tagger_outputs(network: Any, layout: JetRowLayout, table: Any, stats: dict, *, standardised: bool,
                   rotate: bool, where: Path) -> np.ndarray:
    """The network's outputs (B, n_outputs) per jet of ``table``, as float64, before any soft-max."""
    import torch

    from analysis.train.taggers import trim_padding

    columns = StandardisedColumns(stats, source=str(where / "stats.json"))
    table = _table(table, tagger_input_columns(layout, stats, rotate=rotate), where)
    if not standardised:
        table = _standardise(table, columns)
    block = max(1, _PREDICT_BYTES // (4 * layout.width))
    outputs = []
    with torch.no_grad():
        for start in range(0, table.num_rows, block):
            piece = table.slice(start, block)
            rows = np.empty((piece.num_rows, layout.width), dtype=np.float32)
            fill_jet_rows(rows, piece, layout, columns, rotate=rotate)
            outputs.append(network(**trim_padding(layout.unpack(torch.from_numpy(rows)))).double().numpy())
    if not outputs:
        return np.empty((0, network_outputs(network)), dtype=np.float64)
    return np.concatenate(outputs)


def network_outputs(network: Any) -> int:
    """Outputs of a network's last layer (an empty table still gets the right width)."""
    last = [m for m in network.modules() if hasattr(m, "out_features")][-1]
    return int(last.out_features)
