"""Export stage (MLP): the network as ONNX through torch.onnx (the dynamo exporter).

The network is exported as it is, standardised float32 features to logits; the
standardisation, the imputation of missing values and the sigmoid or softmax are ONNX
nodes around it (`analysis.export.graph`), shared with the trees.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

from analysis.core.optional import optional_import
from analysis.core.target import Target
from analysis.errors import StageInputError
from analysis.export.graph import OPSET, Body

__all__ = ["network_body"]

_BODY_INPUT, _BODY_OUTPUT = "x", "logits"


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs a line per torchvision operator it skips and warns about its own
    internals: nothing a user can act on, so hidden for the export only."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _output_width(torch, network: Any, n_features: int) -> int:
    with torch.no_grad():
        out = network(torch.zeros(2, n_features))
    if out.ndim != 2:
        raise StageInputError(f"the network gives outputs of shape {tuple(out.shape)}, expected "
                              "(rows, outputs)")
    return int(out.shape[1])


def network_body(network: Any, n_features: int, target: Target, *, source: str) -> Body:
    """The network as a `Body` on standardised float32 features (missing imputed before it).

    Parameters
    ----------
    network : torch.nn.Module
        The model in eval mode on the CPU (`TrainedModel.network`).
    n_features : int
        Input columns.
    target : Target
        Binary: one logit; multiclass: one per class; regression: one per target column.
    source : str
        The model file, for messages.

    Returns
    -------
    Body
        Gives ``logits`` (rows, outputs).
    """
    torch = optional_import("torch", purpose="hepprep export of an mlp model")
    optional_import("onnxscript", purpose="hepprep export of an mlp model (torch.onnx)")
    network = network.eval()
    width = _output_width(torch, network, n_features)
    if width != target.n_outputs:
        raise StageInputError(f"{source}: the network has {width} outputs, a {target.kind} target "
                              f"needs {target.n_outputs}; train the model again")
    # Two example rows: with one, torch.export would fix the batch size at 1.
    example = (torch.zeros(2, n_features),)
    with _quiet_exporter():
        program = torch.onnx.export(network, example, input_names=[_BODY_INPUT],
                                    output_names=[_BODY_OUTPUT], opset_version=OPSET, dynamo=True,
                                    dynamic_shapes=({0: torch.export.Dim("rows")},), verbose=False)
    return Body(program.model_proto, _BODY_INPUT, _BODY_OUTPUT, gives="logits", impute=True)
