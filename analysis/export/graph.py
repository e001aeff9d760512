"""Export stage: the ONNX graph around a model — raw columns in, standardisation, the model, scores out.

The graph takes the raw feature columns as one float64 matrix and does what
`TrainedModel.predict(table, standardised=False)` does, in the same precision:

1. ``Sub`` then ``Div`` by the stored mean and std in float64, with the numbers of the one
   `Standardisation` object (stats.json): the same IEEE operations as
   `Standardisation.transform`, so every standardised value is the same bit for bit. An
   affine ``x * a + b`` would be faster but round differently, and one ulp moves an event
   across a tree's split threshold.
2. A raw value that is ±inf becomes NaN (NaN stays NaN): missing, as in `transform`.
3. ``Cast`` to float32, the precision both models were trained in.
4. For the network only: NaN and ±inf become 0, the training mean (`networks.impute_missing`);
   XGBoost takes NaN as missing and follows each split's default branch.
5. The model, then the head of its target kind (`analysis.core.target.Target`, the one
   description every stage reads): the signal probability (binary), the class probabilities
   (multiclass), or the regressed values in the units of their skim columns, float64 as in
   `Target.to_physical`: ``output * std + mean`` with the target's statistics, then ``Exp``
   (transform "log") or a product with the raw ``ratio_to`` column of the input ("ratio").

Float64 in, because hepprep reads raw columns as float64 too: a float32 skim column casts to
float64 without loss, and a float64 one is standardised from its exact value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.core.standardise import Standardisation
from analysis.core.target import Target
from analysis.errors import HepprepError, StageInputError

__all__ = ["INPUT", "OPSET", "Body", "assemble", "checked_model", "opsets_of", "outputs_of", "random_raw_rows",
           "ratio_to_index"]

INPUT = "raw"  # the graph's one input: float64 (rows, features), columns in features.json order
# ONNX operator set of the default domain: the lowest the torch.onnx (dynamo) exporter
# writes, and within what onnxruntime 1.16 and later run. The trees' domain (ai.onnx.ml)
# keeps the version onnxmltools gives.
OPSET = 18


@dataclass
class Body:
    """A model as an ONNX graph on standardised float32 inputs.

    Attributes
    ----------
    model : onnx.ModelProto
        Takes ``input`` float32 (rows, features).
    input, output : str
        Names of that input and of the output the head reads.
    gives : str
        ``probabilities`` (rows, classes; 2 columns for binary trees), ``logits`` (rows,
        outputs of the network) or ``values`` (rows, targets, standardised units).
    impute : bool
        Missing inputs become 0 before the model (the network), not NaN (the trees).
    """

    model: object
    input: str
    output: str
    gives: str
    impute: bool


def outputs_of(target: Target) -> list[dict]:
    """The graph's outputs for ``target``: name, dtype, shape (None = rows) and meaning.

    Each has the shape `TrainedModel.predict` returns: (rows,) for binary and for a regression
    of one column, else (rows, classes) or (rows, columns).
    """
    if target.kind == "binary":
        return [{"name": "probability", "dtype": "float32", "shape": [None],
                 "meaning": "signal probability (what hepprep's predict returns)"}]
    if target.kind == "multiclass":
        return [{"name": "probabilities", "dtype": "float32", "shape": [None, target.n_classes],
                 "meaning": "class probabilities, columns in classes order",
                 "classes": list(target.class_names)}]
    columns = list(target.sources)
    one = len(columns) == 1
    undone = {"none": "", "log": ", then exp for the log",
              "ratio": f", then times the raw {target.ratio_to} input column"}
    spec = {"name": "prediction", "dtype": "float64", "shape": [None] if one else [None, len(columns)],
            "meaning": (f"the regressed skim column{'' if one else 's'} in {'its' if one else 'their'} own "
                        f"units (standardisation undone{undone[target.transform]}), as hepprep's predict"),
            "columns": columns, "transform": target.transform}
    if target.transform == "ratio":
        spec["ratio_to"] = target.ratio_to
    return [spec]


def ratio_to_index(target: Target, features: list[str], *, source: str) -> int | None:
    """The input column a ``ratio`` target is multiplied by (None for other targets).

    The graph has one input, the model's features, so the ``ratio_to`` column must be one of
    them; a second input for it would make every caller pass a column the model never reads.

    Raises
    ------
    StageInputError
        ``ratio_to`` is not a feature of the model.
    """
    if target.kind != "regression" or target.transform != "ratio":
        return None
    if target.ratio_to not in features:
        raise StageInputError(f"{source}: the target is a ratio to {target.ratio_to!r}, which is not a feature "
                              "of the model, so the ONNX graph (whose one input is the features) cannot undo "
                              f"it; add {target.ratio_to!r} to features and train again")
    return features.index(target.ratio_to)


def _front(helper, TensorProto, std: Standardisation, impute: bool) -> tuple[list, list, str]:
    """Raw float64 -> standardised float32 (step 1 to 4 of the module docstring)."""
    inits = [
        helper.make_tensor("std/mean", TensorProto.DOUBLE, [len(std.features)], std.mean.tolist()),
        helper.make_tensor("std/std", TensorProto.DOUBLE, [len(std.features)], std.std.tolist()),
        helper.make_tensor("std/nan", TensorProto.DOUBLE, [], [float("nan")]),
    ]
    nodes = [
        helper.make_node("Sub", [INPUT, "std/mean"], ["std/centred"], name="std/sub"),
        helper.make_node("Div", ["std/centred", "std/std"], ["std/z64"], name="std/div"),
        helper.make_node("IsInf", [INPUT], ["std/raw_inf"], name="std/isinf"),
        helper.make_node("Where", ["std/raw_inf", "std/nan", "std/z64"], ["std/z64_missing"],
                         name="std/missing"),
        helper.make_node("Cast", ["std/z64_missing"], ["std/z32"], to=TensorProto.FLOAT, name="std/cast"),
    ]
    out = "std/z32"
    if impute:
        inits.append(helper.make_tensor("impute/zero", TensorProto.FLOAT, [], [0.0]))
        nodes += [
            helper.make_node("IsNaN", [out], ["impute/nan"], name="impute/isnan"),
            # After the cast too: a finite float64 beyond float32's range is inf here, and
            # torch.nan_to_num imputes it as well.
            helper.make_node("IsInf", [out], ["impute/inf"], name="impute/isinf"),
            helper.make_node("Or", ["impute/nan", "impute/inf"], ["impute/missing"], name="impute/or"),
            helper.make_node("Where", ["impute/missing", "impute/zero", out], ["impute/z32"],
                             name="impute/where"),
        ]
        out = "impute/z32"
    return nodes, inits, out


def _head(helper, TensorProto, body_out: str, gives: str, target: Target,
          ratio_column: int | None) -> tuple[list, list]:
    """The body's output -> the graph's output of ``target``'s kind (`outputs_of`)."""
    name = outputs_of(target)[0]["name"]
    if target.kind == "binary":
        column = 1 if gives == "probabilities" else 0  # trees: (1 - p, p); network: one logit
        inits = [helper.make_tensor("head/column", TensorProto.INT64, [], [column])]
        picked = "head/picked" if gives == "logits" else name
        nodes = [helper.make_node("Gather", [body_out, "head/column"], [picked], axis=1, name="head/gather")]
        if gives == "logits":
            nodes.append(helper.make_node("Sigmoid", [picked], [name], name="head/sigmoid"))
        return nodes, inits
    if target.kind == "multiclass":
        op = "Softmax" if gives == "logits" else "Identity"
        extra = {"axis": -1} if op == "Softmax" else {}
        return [helper.make_node(op, [body_out], [name], name="head/probabilities", **extra)], []
    # Regression: Target.to_physical's operations in its order and precision (float64).
    k = target.n_outputs
    inits = [helper.make_tensor("head/std", TensorProto.DOUBLE, [k], list(target.std)),
             helper.make_tensor("head/mean", TensorProto.DOUBLE, [k], list(target.mean))]
    nodes = [helper.make_node("Cast", [body_out], ["head/z64"], to=TensorProto.DOUBLE, name="head/cast"),
             helper.make_node("Mul", ["head/z64", "head/std"], ["head/scaled"], name="head/mul"),
             helper.make_node("Add", ["head/scaled", "head/mean"], ["head/value"], name="head/add")]
    value = "head/value"
    if target.transform == "log":
        nodes.append(helper.make_node("Exp", [value], ["head/physical"], name="head/exp"))
        value = "head/physical"
    elif target.transform == "ratio":
        # The raw column, not the standardised one: predict multiplies by the table's value
        # (NaN or ±inf stays so, and makes the prediction NaN or ±inf as there). A 1-D index
        # keeps the (rows, 1) shape that broadcasts over the k columns.
        inits.append(helper.make_tensor("head/ratio_column", TensorProto.INT64, [1], [ratio_column]))
        nodes += [helper.make_node("Gather", [INPUT, "head/ratio_column"], ["head/ratio_to"], axis=1,
                                   name="head/ratio_to"),
                  helper.make_node("Mul", [value, "head/ratio_to"], ["head/physical"], name="head/ratio")]
        value = "head/physical"
    if k == 1:  # (rows,) as predict gives for one column
        inits.append(helper.make_tensor("head/first", TensorProto.INT64, [], [0]))
        nodes.append(helper.make_node("Gather", [value, "head/first"], [name], axis=1, name="head/column"))
    else:
        nodes.append(helper.make_node("Identity", [value], [name], name="head/prediction"))
    return nodes, inits


def _value_info(helper, TensorProto, spec: dict):
    dtype = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE}[spec["dtype"]]
    shape = ["rows" if d is None else d for d in spec["shape"]]
    return helper.make_tensor_value_info(spec["name"], dtype, shape)


def assemble(body: Body, std: Standardisation, target: Target):
    """The whole graph: front, ``body`` (its names prefixed ``model/``), head; checked by onnx.

    Parameters
    ----------
    body : Body
        The converted model.
    std : Standardisation
        The model's feature standardisation (its features are the input columns).
    target : Target
        Chooses the head; a regression's statistics and transform are undone in it.

    Returns
    -------
    onnx.ModelProto

    Raises
    ------
    StageInputError
        A ``ratio`` target whose ``ratio_to`` is not an input column (`ratio_to_index`).
    """
    import onnx
    from onnx import TensorProto, helper

    inner = onnx.compose.add_prefix(body.model, prefix="model/")
    front, front_inits, standardised = _front(helper, TensorProto, std, body.impute)
    ratio_column = ratio_to_index(target, std.features, source="export")
    head, head_inits = _head(helper, TensorProto, f"model/{body.output}", body.gives, target, ratio_column)
    link = helper.make_node("Identity", [standardised], [f"model/{body.input}"], name="model/input")
    graph = helper.make_graph(
        [*front, link, *inner.graph.node, *head], "hepprep",
        [helper.make_tensor_value_info(INPUT, TensorProto.DOUBLE, ["rows", len(std.features)])],
        [_value_info(helper, TensorProto, spec) for spec in outputs_of(target)],
        initializer=[*front_inits, *inner.graph.initializer, *head_inits],
        value_info=list(inner.graph.value_info),
    )
    return checked_model(graph, inner, "hepprep model: raw feature columns (float64, NaN = missing) in, "
                                       f"{target.kind} scores out; see metadata_props")


def checked_model(graph, inner, doc: str):
    """``graph`` as a checked model, importing the operator sets (and functions) of the converted ``inner``."""
    import onnx
    from onnx import helper

    opsets = {"": OPSET}
    for entry in inner.opset_import:
        if entry.domain not in ("", "ai.onnx"):
            opsets[entry.domain] = max(opsets.get(entry.domain, 0), entry.version)
        elif entry.version > OPSET:
            raise HepprepError(f"the converted model needs ONNX opset {entry.version}, above the "
                               f"{OPSET} hepprep exports; please report it")
    imports = [helper.make_opsetid(domain, version) for domain, version in opsets.items()]
    model = helper.make_model(graph, opset_imports=imports, producer_name="hepprep",
                              ir_version=helper.find_min_ir_version_for(imports),
                              functions=list(inner.functions))
    model.doc_string = doc
    onnx.checker.check_model(model, full_check=True)
    return model


def opsets_of(model) -> dict[str, int]:
    """``{"ai.onnx": 18, "ai.onnx.ml": 1}``: the operator sets a model imports."""
    return {(entry.domain or "ai.onnx"): int(entry.version) for entry in model.opset_import}


def random_raw_rows(std: Standardisation, rows: int, *, seed: int = 0) -> np.ndarray:
    """Raw rows for a self-check: about the training distribution, with NaN and ±inf among them."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, (rows, len(std.features)))
    raw = std.inverse(z)
    missing = rng.random(raw.shape)
    raw[missing < 0.08] = np.nan
    raw[(missing >= 0.08) & (missing < 0.1)] = np.inf
    raw[(missing >= 0.1) & (missing < 0.12)] = -np.inf
    raw[0] = np.nan  # one event with nothing known
    return raw
