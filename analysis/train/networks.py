"""Training stage (MLP): the fully connected network, built the same way for training and prediction.

The network is rebuilt from `model_info.json` ("n_features", "params": hidden, dropout)
and then loaded from the state dict `model.pt`, so a model directory needs no pickled
Python class to be read back.
"""

from __future__ import annotations

from analysis.core.optional import optional_import

__all__ = ["build_mlp", "impute_missing"]


def impute_missing(x):
    """Replace missing features (NaN, and ±inf) by 0, the training mean in standardised units.

    Prepare writes non-finite raw values as NaN after standardisation (trees treat NaN as
    missing); a network would turn one NaN into a NaN loss, so training and prediction
    both impute the mean here. ±inf (in a file prepare did not write) is missing too.

    Parameters
    ----------
    x : torch.Tensor, float32 ``(batch, n_features)``
    """
    import torch

    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def build_mlp(n_features: int, *, hidden: list[int], dropout: float = 0.0, n_outputs: int = 1):
    """A feed-forward network: Linear-ReLU(-Dropout) blocks, then ``n_outputs`` outputs.

    Parameters
    ----------
    n_features : int
        Inputs per event (the standardised features, stats.json order).
    hidden : list of int
        Widths of the hidden layers (default config: 64, 128, 64).
    dropout : float
        Dropout probability after each hidden layer (0 disables it).
    n_outputs : int
        One logit (binary), one logit per class (soft-max), one value per regressed column.

    Returns
    -------
    torch.nn.Sequential
        Maps float32 ``(batch, n_features)`` to ``(batch, n_outputs)``; for the binary
        label the signal score is ``sigmoid(logit)``.
    """
    torch = optional_import("torch", purpose="the mlp model")
    nn = torch.nn
    layers: list = []
    width = n_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)
