"""Export stage (taggers: pfn, part, cnn): the jet networks as one ONNX graph on physical inputs.

The graph's inputs are what a jet skim holds, in its units (`tagger_inputs`):

- pfn, part: ``constituents`` float32 (rows, N, F), the raw values of the constituent
  features in the model's order, each jet's first N constituents by decreasing pt; and
  ``mask`` bool (rows, N), True where a real constituent is (padded slots may hold anything);
- cnn: ``images`` float32 (rows, C, 40, 40) as `analysis.core.jet_images.jet_images` makes
  them from the constituents in physical units;
- with jet features: ``raw`` float64 (rows, J), the flat jet columns (the MLP's input, so the
  regression head's ``ratio_to`` Gather of `analysis.export.graph` reads it alike).

Inside, a small torch module does what `TrainedModel.predict(table, standardised=False)`
does before the network: each standardised column ``(x - mean) / std`` in float64 with
stats.json's numbers (the operations of `Standardisation.transform`), a raw value that is
not finite made missing (NaN, which the network imputes), padded slots set to 0 after the
standardisation as the loader fills them; then the network. It is exported with the dynamo
exporter (the rows dynamic, N fixed to the model's), without `trim_padding`, whose batch
maximum would be data-dependent control flow: padding changes no output. The head of the
target (`analysis.export.graph._head`) follows as ONNX nodes, shared with the MLP.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis.core.jet_images import DEFAULT_CHANNELS, IMAGE_PIXELS, PIXEL_SIZE
from analysis.core.jet_tables import ROTATE_COLUMNS, StandardisedColumns, table_images
from analysis.core.optional import optional_import
from analysis.core.padding import padded_columns
from analysis.core.standardise import Standardisation
from analysis.core.target import Target
from analysis.errors import StageInputError
from analysis.export.graph import INPUT, OPSET, _head, checked_model, outputs_of, random_raw_rows, ratio_to_index
from analysis.export.mlp import _quiet_exporter

__all__ = ["CONSTITUENTS", "IMAGES", "MASK", "tagger_check_inputs", "tagger_graph", "tagger_inputs"]

CONSTITUENTS, MASK, IMAGES = "constituents", "mask", "images"
_LOGITS = "logits"


def _constituent_standardisation(model: Any) -> Standardisation:
    """mean/std per constituent feature in model order; a list prepare did not standardise: 0 and 1."""
    listed = StandardisedColumns(model.stats, source=str(model.path / "stats.json")).standardised
    mean, std = [], []
    for name in model.layout.constituent_features:
        undo = listed.get(name)
        if undo is None:
            mean.append(0.0)
            std.append(1.0)
        else:
            standardisation, j = undo
            mean.append(float(standardisation.mean[j]))
            std.append(float(standardisation.std[j]))
    return Standardisation(model.layout.constituent_features, mean, std)


def _jet_standardisation(model: Any) -> Standardisation:
    return Standardisation.from_stats(model.stats, list(model.layout.jet_features),
                                      source=str(model.path / "stats.json"))


def tagger_inputs(model: Any) -> list[dict]:
    """The graph's inputs of a tagger: name, dtype, shape (None = rows), meaning; for features.json."""
    layout = model.layout
    n_jets = len(layout.jet_features)
    if layout.images:
        channels = {c: list(DEFAULT_CHANNELS[c]) for c in layout.channels}
        inputs = [{"name": IMAGES, "dtype": "float32", "shape": [None, len(channels), IMAGE_PIXELS, IMAGE_PIXELS],
                   "meaning": "pt-weighted jet images in physical units, as analysis.core.jet_images.jet_images "
                              "makes them (row: Delta phi, column: Delta eta, both from -0.4)",
                   "channels": list(layout.channels), "channel_classes": channels,
                   "pixels": IMAGE_PIXELS, "pixel_size": PIXEL_SIZE,
                   "rotated": bool(model.info.get("params", {}).get("rotate_images", False))}]
    else:
        n, f = layout.n_constituents, len(layout.constituent_features)
        inputs = [{"name": CONSTITUENTS, "dtype": "float32", "shape": [None, n, f],
                   "meaning": "raw constituent values (the skim's cand_* lists), each jet's first N "
                              "constituents by decreasing pt; padded slots may hold any value; NaN or "
                              "+-inf means missing",
                   "features": list(layout.constituent_features), "constituents": n,
                   "fixed_constituents": "N is the model's: pad or truncate each jet to it"},
                  {"name": MASK, "dtype": "bool", "shape": [None, n],
                   "meaning": "True where a slot holds a real constituent"}]
    if n_jets:
        inputs.append({"name": INPUT, "dtype": "float64", "shape": [None, n_jets],
                       "meaning": "raw jet features (flat skim columns); NaN or +-inf means missing",
                       "features": list(layout.jet_features)})
    return inputs


def _front_module(torch: Any, network: Any, model: Any):
    """standardise -> network, as a torch module whose inputs are `tagger_inputs` (one of two signatures)."""
    jets = _jet_standardisation(model)
    constituents = None if model.layout.images else _constituent_standardisation(model)

    def standardised(x, mean, std):
        # Standardisation.transform's operations: float64, then non-finite raw -> NaN, float32.
        x = x.double()
        z = Standardisation.standardised(x, mean, std)
        return torch.where(torch.isfinite(x), z, torch.full_like(z, float("nan"))).float()

    class Front(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.network = network
            self.register_buffer("jet_mean", torch.tensor(jets.mean, dtype=torch.float64))
            self.register_buffer("jet_std", torch.tensor(jets.std, dtype=torch.float64))
            if constituents is not None:
                self.register_buffer("mean", torch.tensor(constituents.mean, dtype=torch.float64))
                self.register_buffer("std", torch.tensor(constituents.std, dtype=torch.float64))

        def jets(self, raw, like):
            if raw is None:
                return like.new_zeros((like.shape[0], 0), dtype=torch.float32)
            return standardised(raw, self.jet_mean, self.jet_std)

    class ConstituentFront(Front):
        def forward(self, constituents, mask, raw=None):
            z = standardised(constituents, self.mean, self.std)
            z = torch.where(mask.unsqueeze(-1), z, torch.zeros_like(z))  # as the loader pads: 0
            return self.network(z, mask, self.jets(raw, z))

    class ImageFront(Front):
        def forward(self, images, raw=None):
            return self.network(images, self.jets(raw, images))

    return (ImageFront if model.layout.images else ConstituentFront)().eval()


def _examples(torch: Any, model: Any) -> tuple:
    """Two example rows (with one, torch.export would fix the batch size at 1)."""
    layout = model.layout
    raw = (torch.zeros(2, len(layout.jet_features), dtype=torch.float64),) if layout.jet_features else ()
    if layout.images:
        return (torch.zeros(2, len(layout.channels), IMAGE_PIXELS, IMAGE_PIXELS), *raw)
    n, f = layout.n_constituents, len(layout.constituent_features)
    mask = torch.arange(n)[None, :] < torch.tensor([[1], [n]])
    return (torch.zeros(2, n, f), mask, *raw)


def tagger_graph(model: Any, target: Target):
    """The whole ONNX graph of a tagger model folder (module docstring), checked by onnx.

    Parameters
    ----------
    model : TrainedModel
        A pfn, part or cnn model (`analysis.train.predict.load_model`).
    target : Target
        Chooses the head (`analysis.export.graph._head`).

    Returns
    -------
    onnx.ModelProto

    Raises
    ------
    StageInputError
        The network's outputs do not fit the target; a ``ratio`` target whose ``ratio_to``
        is not a jet feature.
    HepprepError
        The exporter wrote an opset above `OPSET`.
    """
    torch = optional_import("torch", purpose=f"hepprep export of a {model.kind} model")
    optional_import("onnxscript", purpose=f"hepprep export of a {model.kind} model (torch.onnx)")
    import onnx
    from onnx import TensorProto, helper

    source = str(model.path / "model.pt")
    ratio_column = ratio_to_index(target, list(model.layout.jet_features), source=str(model.path / "stats.json"))
    front = _front_module(torch, model.network.eval(), model)
    examples = _examples(torch, model)
    with torch.no_grad():
        width = front(*examples).shape[1]
    if width != target.n_outputs:
        raise StageInputError(f"{source}: the network has {width} outputs, a {target.kind} target "
                              f"needs {target.n_outputs}; train the model again")
    names = [spec["name"] for spec in tagger_inputs(model)]
    rows = torch.export.Dim("rows")
    with _quiet_exporter():
        program = torch.onnx.export(front, examples, input_names=names, output_names=[_LOGITS],
                                    opset_version=OPSET, dynamo=True, verbose=False,
                                    dynamic_shapes=tuple({0: rows} for _ in examples))
    body = onnx.compose.add_prefix(program.model_proto, prefix="model/", rename_inputs=False)
    head, head_inits = _head(helper, TensorProto, f"model/{_LOGITS}", "logits", target, ratio_column)
    graph = helper.make_graph(
        [*body.graph.node, *head], "hepprep", list(body.graph.input),
        [_output_info(helper, TensorProto, spec) for spec in outputs_of(target)],
        initializer=[*body.graph.initializer, *head_inits], value_info=list(body.graph.value_info))
    return checked_model(graph, body, f"hepprep {model.kind} tagger: {', '.join(names)} in physical units in, "
                                      f"{target.kind} scores out; see metadata_props")


def _output_info(helper, TensorProto, spec: dict):
    dtype = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE}[spec["dtype"]]
    return helper.make_tensor_value_info(spec["name"], dtype, ["rows" if d is None else d for d in spec["shape"]])


def _random_lists(rng: np.random.Generator, counts: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Constituent values about the training distribution, NaN and +-inf among them (flat, float32)."""
    values = rng.normal(mean, 1.5 * std, int(counts.sum()))
    pick = rng.random(len(values))
    values[pick < 0.05] = np.nan
    values[(pick >= 0.05) & (pick < 0.06)] = np.inf
    values[(pick >= 0.06) & (pick < 0.07)] = -np.inf
    return values.astype(np.float32)


def _image_lists(rng: np.random.Generator, name: str, counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Positions near pixel centres (a float32 rounding in predict's standardise-and-undo moves none
    across a pixel edge), integer class codes; the weight as drawn."""
    size = int(counts.sum())
    if name in ("cand_deta", "cand_dphi"):
        pixel = rng.integers(-IMAGE_PIXELS // 2 - 3, IMAGE_PIXELS // 2 + 3, size)  # some outside the image
        centres = (pixel + 0.5 + rng.uniform(-0.3, 0.3, size)) * PIXEL_SIZE
        centres[rng.random(size) < 0.03] = np.nan
        return centres.astype(np.float32)
    if name == "cand_class":
        return rng.integers(0, len(DEFAULT_CHANNELS), size).astype(np.float32)
    return values


def tagger_check_inputs(model: Any, target: Target, rows: int, *, seed: int = 0) -> tuple[dict, Any]:
    """Random raw jets both ways: (onnxruntime's inputs, the same jets as a pyarrow table for predict).

    Each jet has 0 to N + 5 constituents (some none, some more than N: truncated), NaN and
    ±inf among the values, and garbage in the padded slots so the mask must do its work; the
    jet features come from `random_raw_rows`, finite and not 0 in a ``ratio_to`` column.
    For the CNN the images are made from the lists (`table_images` in physical units).
    """
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    layout = model.layout
    n = layout.n_constituents or 30
    counts = rng.integers(0, n + 6, rows)
    counts[:3] = (0, 1, n + 5)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int64())
    columns: dict[str, Any] = {}
    listed = [c for c in model.input_columns if c.startswith("cand_")]
    std = _constituent_standardisation(model) if not layout.images else None
    for name in listed:
        if std is not None:
            j = std.index(name)
            mean, spread = float(std.mean[j]), float(std.std[j])
        else:
            mean, spread = 1.0, 1.0
        flat = _random_lists(rng, counts, mean, spread)
        if layout.images:
            flat = _image_lists(rng, name, counts, np.where(np.isfinite(flat), np.abs(flat), 1.0))
        columns[name] = pa.LargeListArray.from_arrays(offsets, pa.array(flat))
    jets = _jet_standardisation(model)
    raw = random_raw_rows(jets, rows, seed=seed)
    j = ratio_to_index(target, jets.features, source=str(model.path / "stats.json"))
    if j is not None:
        bad = ~np.isfinite(raw[:, j]) | (raw[:, j] == 0)
        raw[bad, j] = jets.mean[j] or jets.std[j]
    for k, name in enumerate(jets.features):
        columns[name] = pa.array(raw[:, k])
    for name in (c for c in model.input_columns if c not in columns):
        # The subjet a rotated image points up: none (NaN, unrotated) or straight up, so a
        # float32 rounding of it turns no constituent across a pixel edge.
        columns[name] = pa.array(np.where(rng.random(rows) < 0.5, np.nan, 1.0 if name == ROTATE_COLUMNS[1] else 0.0))
    table = pa.table(columns)
    feeds: dict[str, np.ndarray] = {}
    if layout.images:
        physical = StandardisedColumns({}, source="export check")  # the lists as they are: physical units
        channels = {c: DEFAULT_CHANNELS[c] for c in layout.channels}
        feeds[IMAGES] = table_images(physical, table, channels=channels,
                                     rotate=bool(model.info.get("params", {}).get("rotate_images", False)))
    else:
        x, mask = padded_columns(columns, list(layout.constituent_features), n)
        garbage = rng.normal(0.0, 1e3, x.shape).astype(np.float32)
        garbage[rng.random(x.shape) < 0.1] = np.nan
        feeds[CONSTITUENTS] = np.where(mask[..., None], x, garbage)
        feeds[MASK] = mask
    if jets.features:
        feeds[INPUT] = raw
    return feeds, table
