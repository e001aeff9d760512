"""Training stage: the one prediction API — load a model directory, score events with either model.

Evaluation and the notebooks call only this: `load_model(model_dir).predict(table,
standardised=...)`. It applies the standardisation stored with the model (the prepared
stats.json) to raw skim rows, so a model can score new events that never went through
`hepprep prepare`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analysis.core.io import read_json
from analysis.core.standardise import Standardisation
from analysis.core.tagger_config import TAGGER_MODELS
from analysis.core.target import Target
from analysis.errors import StageInputError
from analysis.train.model_dir import MODEL_INFO, load_network_state

__all__ = ["TrainedModel", "load_model", "standardise"]

_PREDICT_ROWS = 65_536  # rows per network forward pass: bounded memory on big tables


def standardise(raw: np.ndarray, features: list[str], stats: dict) -> np.ndarray:
    """``(raw - mean) / std`` per column with the stats.json statistics.

    Parameters
    ----------
    raw : ndarray, shape (rows, len(features))
        Raw skim values, columns in ``features`` order.
    features : list of str
        Column names of ``raw``.
    stats : dict
        stats.json content (``stats["features"][name]["mean"|"std"]``).

    Returns
    -------
    ndarray of float32, same shape; a raw value that is not finite (NaN, ±inf) is NaN
    """
    return Standardisation.from_stats(stats, features).transform(raw)


def _feature_matrix(table: Any, features: list[str], model_dir: Path) -> np.ndarray:
    if hasattr(table, "column_names"):  # pyarrow Table / RecordBatch
        names = list(table.column_names)
        getter = lambda f: table.column(f).to_numpy()  # noqa: E731
    elif hasattr(table, "columns"):  # pandas DataFrame
        names = [str(c) for c in table.columns]
        getter = lambda f: table[f].to_numpy()  # noqa: E731
    else:
        raise StageInputError(f"predict: expected a pandas DataFrame or pyarrow Table, "
                              f"got {type(table).__name__}")
    missing = [f for f in features if f not in names]
    if missing:
        raise StageInputError(f"predict: the table lacks features {', '.join(missing)} that the "
                              f"model in {model_dir} was trained on (it has {len(names)} columns: "
                              f"{', '.join(names[:12])}{', ...' if len(names) > 12 else ''})")
    matrix = np.empty((len(table), len(features)), dtype=np.float64)
    for j, name in enumerate(features):
        matrix[:, j] = getter(name)
    return matrix


@dataclass
class TrainedModel:
    """A trained classifier read from its model directory.

    Attributes
    ----------
    name : str
        The model directory's name (``xgboost``, ``mlp``, ...).
    kind : str
        ``xgboost``, ``mlp``, or a tagger of jets: ``pfn``, ``part``, ``cnn``.
    features : list of str
        Input features, in the order the model expects.
    stats : dict
        The prepared stats.json the model was trained with (raw-unit statistics).
    info : dict
        model_info.json.
    booster : xgboost.Booster or None
        The trees (XGBoost models only): gain importance, ``pred_contribs`` SHAP values.
    network : torch.nn.Module or None
        The network in eval mode on CPU (MLP and tagger models).
    layout : JetRowLayout or None
        A tagger's (pfn, part, cnn) inputs: N, constituent features, jet features, image channels.
    """

    name: str
    kind: str
    path: Path
    features: list[str]
    stats: dict
    info: dict
    booster: Any = None
    network: Any = field(default=None, repr=False)
    layout: Any = None

    @property
    def input_columns(self) -> list[str]:
        """The prepared (or skim) columns `predict` reads: the features, or a tagger's lists and jet features."""
        if self.layout is None:
            return list(self.features)
        from analysis.train.tagger_predict import tagger_input_columns

        return tagger_input_columns(self.layout, self.stats, rotate=self._rotate)

    @property
    def _rotate(self) -> bool:
        return bool(self.info.get("params", {}).get("rotate_images", False))

    @property
    def target(self) -> Target:
        """What the model predicts (the prepared stats.json's target; binary when it has none)."""
        return Target.from_stats(self.stats, where=str(self.path / "stats.json"))

    def predict(self, table: Any, *, standardised: bool) -> np.ndarray:
        """The model's answer for each row of ``table``.

        Binary: the signal score in [0, 1], shape (rows,). Multi-class: the class
        probabilities, (rows, classes) in stats.json's class order. Regression: the
        prediction in the units of the regressed skim column (standardisation and
        transform undone), (rows,) for one column, else (rows, columns); a ``ratio``
        target needs its ``ratio_to`` column in ``table``.

        Parameters
        ----------
        table : pandas.DataFrame or pyarrow.Table
            Holds at least the model's `input_columns` (others are ignored); a tagger's
            constituent lists as list columns, one list per jet.
        standardised : bool
            True for prepared rows (features already standardised); False for raw skim
            rows, which get the stored standardisation first.

        Returns
        -------
        ndarray of float64
        """
        target = self.target
        if self.layout is not None:
            outputs = self._tagger_outputs(table, target, standardised=standardised)
            rows = len(outputs)
        else:
            matrix = _feature_matrix(table, self.features, self.path)
            x = (matrix.astype(np.float32) if standardised
                 else standardise(matrix, self.features, self.stats))
            outputs, rows = self._outputs(x, target), len(x)
        if target.kind != "regression":
            return outputs
        ratio_to = None
        if target.ratio_to is not None:
            ratio_to = _feature_matrix(table, [target.ratio_to], self.path)[:, 0]
            if standardised and target.ratio_to in self.features:  # prepared rows: back to raw
                stats = self.stats["features"][target.ratio_to]
                ratio_to = ratio_to * stats["std"] + stats["mean"]
        values = target.to_physical(outputs.reshape(rows, -1), ratio_to)
        return values[:, 0] if values.shape[1] == 1 else values

    def _outputs(self, x: np.ndarray, target: Target) -> np.ndarray:
        """Probabilities (binary: of the signal), or standardised regression values."""
        if self.kind == "xgboost":
            import xgboost as xgb
            return self.booster.predict(xgb.DMatrix(x, feature_names=self.features)).astype(np.float64)
        import torch

        from analysis.train.networks import impute_missing
        width = 1 if target.kind == "binary" else target.n_outputs
        out = np.empty((len(x), width), dtype=np.float64)
        with torch.no_grad():
            for start in range(0, len(x), _PREDICT_ROWS):
                logits = self.network(impute_missing(torch.from_numpy(x[start:start + _PREDICT_ROWS])))
                out[start:start + len(logits)] = _scores(logits, target).double().numpy()
        return out[:, 0] if target.kind == "binary" else out

    def _tagger_outputs(self, table: Any, target: Target, *, standardised: bool) -> np.ndarray:
        import torch

        from analysis.train.tagger_predict import tagger_outputs

        logits = tagger_outputs(self.network, self.layout, table, self.stats, standardised=standardised,
                                rotate=self._rotate, where=self.path)
        out = _scores(torch.from_numpy(logits), target).numpy()
        return out[:, 0] if target.kind == "binary" else out


def _scores(logits: Any, target: Target) -> Any:
    """Network outputs as the model's answer: the signal probability (binary: (rows, 1)), class
    probabilities, or the standardised regression values."""
    import torch

    if target.kind == "binary":
        return torch.sigmoid(logits[:, :1])
    if target.kind == "multiclass":
        return torch.softmax(logits, dim=1)
    return logits


def load_model(model_dir: str | Path) -> TrainedModel:
    """Read a model directory written by `hepprep train`.

    Every file is checked and a damaged one named in one line; model files are data
    (XGBoost JSON, a torch state dict of tensors only), never code.

    Raises
    ------
    StageInputError
        No such directory, no model_info.json (training did not finish), or a file of the
        folder that is damaged or does not fit the others.
    """
    path = Path(model_dir)
    info_path = path / MODEL_INFO
    if not info_path.is_file():
        what = "no such model directory" if not path.is_dir() else f"no {MODEL_INFO} (training did not finish)"
        raise StageInputError(f"{path}: {what}; run `hepprep train PREPDIR --out {path}` first")
    retrain = f"; train it again with `hepprep train PREPDIR --out {path}`"
    info = read_json(info_path, "the model record")
    features = read_json(path / "features.json", "the model's feature list")
    stats = read_json(path / "stats.json", "the model's statistics")
    if not isinstance(info, dict):
        raise StageInputError(f"{info_path}: not a model record (a JSON object){retrain}")
    if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
        raise StageInputError(f"{path / 'features.json'}: not a list of feature names{retrain}")
    if not isinstance(stats, dict):
        raise StageInputError(f"{path / 'stats.json'}: not a statistics object{retrain}")
    Standardisation.from_stats(stats, features, source=str(path / "stats.json"))
    kind = info.get("model")
    model = TrainedModel(name=path.name, kind=kind, path=path, features=features,
                         stats=stats, info=info)
    if kind == "xgboost":
        model.booster = _load_booster(path / "model.json", features, retrain)
    elif kind == "mlp":
        model.network = _load_network(path, info, features, retrain)
    elif kind in TAGGER_MODELS:
        from analysis.train.tagger_predict import load_tagger

        model.network, model.layout = load_tagger(path, info, stats, retrain)
    else:
        raise StageInputError(f"{info_path}: unknown model {kind!r}; expected xgboost, mlp, pfn, part or cnn")
    return model


def _load_booster(file: Path, features: list[str], retrain: str) -> Any:
    import xgboost as xgb

    try:
        booster = xgb.Booster(model_file=str(file))
    except xgb.core.XGBoostError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unreadable"
        raise StageInputError(f"{file}: not a readable XGBoost model ({first[:200]}){retrain}") from None
    if booster.num_features() != len(features):
        raise StageInputError(f"{file}: the model takes {booster.num_features()} features, features.json "
                              f"lists {len(features)}{retrain}")
    booster.feature_names = features
    return booster


def _load_network(path: Path, info: dict, features: list[str], retrain: str) -> Any:
    from analysis.core.optional import optional_import
    from analysis.train.networks import build_mlp

    optional_import("torch", purpose="the mlp model")
    params = info.get("params")
    try:
        net = build_mlp(len(features), hidden=list(params["hidden"]), dropout=float(params["dropout"]),
                        n_outputs=int(info.get("n_outputs", 1)))
    except (TypeError, KeyError, ValueError):
        raise StageInputError(f"{path / MODEL_INFO}: no usable network shape (params.hidden, "
                              f"params.dropout){retrain}") from None
    return load_network_state(net, path, retrain)
