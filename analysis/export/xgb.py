"""Export stage (XGBoost): the booster as an ONNX tree ensemble, through onnxmltools.

onnxmltools reads the booster's JSON dump. Three things are set straight around it
(tests/test_export.py's multi-target regression tests fail when the second or third goes
wrong):

- hepprep predicts with every tree of model.json (training keeps only the best rounds,
  ``save_best``); the converter is handed a copy without the ``best_iteration`` marks, so no
  version of it that trims to the best iteration drops trees hepprep uses.
- onnxmltools 1.16 tells a regression of several targets from a classifier by guessing: only
  when every node's cover is a whole number (unweighted training). hepprep trains with
  ``train_weight``, so it would convert such a booster as a binary classifier; the
  converter is handed the booster wrapped with the kind, targets and objective its
  configuration states (`_wrapped`).
- onnxmltools 1.16 adds every regression tree to the first target. With several targets
  (``one_output_per_tree``), each tree's target is set from the model's ``tree_info``.
"""

from __future__ import annotations

import json
from typing import Any

from analysis.core.target import Target
from analysis.errors import StageInputError
from analysis.export.graph import Body

__all__ = ["xgboost_body"]

_BODY_INPUT = "x"
# The default domain's operator set asked of onnxmltools: its XGBoost converter goes no
# higher, and the trees it writes use only the ai.onnx.ml domain anyway.
_CONVERTER_OPSET = 15


def _plain_copy(booster: Any):
    """The booster with f0..fN feature names (the converter's) and no best-iteration marks."""
    import xgboost as xgb

    copy = xgb.Booster(model_file=bytearray(booster.save_raw("json")))
    copy.feature_names = None
    copy.feature_types = None
    copy.set_attr(best_iteration=None, best_score=None, best_ntree_limit=None)
    return copy


def _learner(booster: Any) -> tuple[dict, list[int]]:
    """(learner config, tree_info: the output each tree adds to)."""
    config = json.loads(booster.save_config())["learner"]
    raw = json.loads(bytes(booster.save_raw("json")))
    tree_info = raw["learner"]["gradient_booster"]["model"].get("tree_info", [])
    return config, [int(t) for t in tree_info]


def _check_fits(config: dict, target: Target, source: str) -> str:
    """The booster's objective, checked against the target of the model's stats.json."""
    objective = config.get("objective", {}).get("name", "")
    params = config.get("learner_model_param", {})
    num_class = int(params.get("num_class", 0) or 0)
    num_target = int(params.get("num_target", 1) or 1)
    strategy = config.get("learner_train_param", {}).get("multi_strategy", "one_output_per_tree")
    expected = {"binary": ("binary:logistic",), "multiclass": ("multi:softprob",),
                "regression": ("reg:squarederror", "reg:absoluteerror", "reg:pseudohubererror")}
    retrain = "train the model again"
    if objective not in expected[target.kind]:
        raise StageInputError(f"{source}: a {target.kind} model, but the booster's objective is "
                              f"{objective!r} (export takes {', '.join(expected[target.kind])}); {retrain}")
    if target.kind == "multiclass" and num_class != target.n_classes:
        raise StageInputError(f"{source}: the booster has {num_class} classes, the target lists "
                              f"{target.n_classes}; {retrain}")
    if target.kind == "regression" and num_target != target.n_outputs:
        raise StageInputError(f"{source}: the booster predicts {num_target} targets, the target has "
                              f"{target.n_outputs} columns; {retrain}")
    if num_target > 1 and strategy != "one_output_per_tree":
        raise StageInputError(f"{source}: multi_strategy {strategy!r} (vector leaves) cannot be "
                              "exported by onnxmltools; train with multi_strategy = \"one_output_per_tree\"")
    return objective


def _wrapped(copy: Any, target: Target, objective: str):
    """The converter's booster wrapper, told what the booster is instead of guessing it."""
    from onnxmltools.convert.xgboost._parse import WrappedBooster

    wrapped = WrappedBooster(copy)
    if target.kind == "regression":
        wrapped.kwargs.update(num_class=0, num_target=target.n_outputs, objective=objective)
        wrapped.operator_name = "XGBRegressor"
    else:  # binary: one class output in xgboost's terms (the converter gives p and 1 - p)
        num_class = 1 if target.kind == "binary" else target.n_classes
        wrapped.kwargs.update(num_class=num_class, objective=objective)
        wrapped.operator_name = "XGBClassifier"
        wrapped.classes_ = wrapped._generate_classes(wrapped.kwargs)
    return wrapped


def _route_trees(model: Any, tree_info: list[int], target: Target, source: str) -> None:
    """Send each regression tree to its own target (the converter sends all to the first)."""
    from onnx import helper

    if target.kind != "regression" or target.n_outputs == 1:
        return
    (node,) = [n for n in model.graph.node if n.op_type == "TreeEnsembleRegressor"]
    attrs = {a.name: a for a in node.attribute}
    trees = list(attrs["target_treeids"].ints)
    if max(trees, default=-1) >= len(tree_info):
        raise StageInputError(f"{source}: the converted ensemble has tree {max(trees)}, the booster "
                              f"{len(tree_info)} trees: this onnxmltools numbers trees differently "
                              "(onnxmltools 1.16 is known to work)")
    routed = helper.make_attribute("target_ids", [tree_info[t] for t in trees])
    attrs["target_ids"].CopyFrom(routed)


def xgboost_body(booster: Any, n_features: int, target: Target, *, source: str) -> Body:
    """The booster as a `Body` on standardised float32 features (NaN: missing).

    Parameters
    ----------
    booster : xgboost.Booster
        The model (`TrainedModel.booster`).
    n_features : int
        Input columns.
    target : Target
        What the model predicts (`TrainedModel.target`); the objective must fit.
    source : str
        The model file, for messages.

    Returns
    -------
    Body
        ``probabilities`` (rows, 2 or classes) for classifiers, ``values`` (rows, targets).
    """
    from analysis.core.optional import optional_import

    optional_import("onnxmltools", purpose="hepprep export of an xgboost model")
    from onnxmltools.convert import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    config, tree_info = _learner(booster)
    objective = _check_fits(config, target, source)
    model = convert_xgboost(_wrapped(_plain_copy(booster), target, objective), target_opset=_CONVERTER_OPSET,
                            initial_types=[(_BODY_INPUT, FloatTensorType([None, n_features]))])
    _route_trees(model, tree_info, target, source)
    names = [o.name for o in model.graph.output]
    if target.kind == "regression":
        return Body(model, _BODY_INPUT, names[0], gives="values", impute=False)
    # A classifier gives (label, probabilities); the head reads the probabilities.
    return Body(model, _BODY_INPUT, names[-1], gives="probabilities", impute=False)
