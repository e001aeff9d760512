"""Export stage: `hepprep export MODELDIR --onnx FILE` — one ONNX file that scores raw skim rows.

The model folder is read through the one prediction API (`analysis.train.predict.load_model`,
so a folder it refuses is refused here with the same one-line message), converted
(`export.xgb` or `export.mlp`), wrapped in the standardisation and the head of its target
(`export.graph`), and checked: onnxruntime scores a few hundred raw rows, NaN and ±inf
among them, and must agree with `TrainedModel.predict` before anything is written (for every
target kind: probabilities to `PROBABILITY_TOLERANCE`, regressed values to
`REGRESSION_TOLERANCE` relative). Then
``<stem>.features.json`` (the input columns in order, the input and output names, the opset,
the target and the source model) and the ONNX file, each written atomically; the ONNX file
last, and it carries the same record in its ``metadata_props``, so it stands on its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from analysis.core.io import write_bytes_atomic, write_json_atomic
from analysis.core.optional import optional_import
from analysis.core.progress import stage_console
from analysis.core.provenance import file_sha256, hepprep_version
from analysis.core.standardise import Standardisation
from analysis.core.tagger_config import TAGGER_MODELS
from analysis.core.target import Target
from analysis.errors import ConfigError, HepprepError
from analysis.export.graph import INPUT, assemble, opsets_of, outputs_of, random_raw_rows, ratio_to_index
from analysis.export.tagger import tagger_check_inputs, tagger_graph, tagger_inputs
from analysis.train.model_dir import MODEL_INFO
from analysis.train.predict import TrainedModel, load_model

__all__ = ["CHECK_ROWS", "PROBABILITY_TOLERANCE", "REGRESSION_TOLERANCE", "features_file",
           "max_difference", "onnx_scores", "run_export"]

CHECK_ROWS = 256  # raw rows scored by both hepprep and onnxruntime before anything is written
PROBABILITY_TOLERANCE = 1e-5  # max |difference| of a probability (the acceptance of the issue)
REGRESSION_TOLERANCE = 1e-4  # max relative difference of a regressed value (see `max_difference`)
# The libraries that shape an export, by model kind (recorded with it).
_NETWORK_LIBRARIES = ("onnx", "onnxruntime", "torch", "onnxscript")
_LIBRARIES = {"xgboost": ("onnx", "onnxruntime", "xgboost", "onnxmltools"), "mlp": _NETWORK_LIBRARIES,
              **{kind: _NETWORK_LIBRARIES for kind in TAGGER_MODELS}}


def features_file(onnx_file: str | Path) -> Path:
    """The record written beside ``FILE.onnx``: ``FILE.features.json``."""
    onnx_file = Path(onnx_file)
    return onnx_file.with_name(f"{onnx_file.stem}.features.json")


def _check_destination(onnx_file: Path) -> None:
    if onnx_file.suffix != ".onnx":
        raise ConfigError(f"--onnx {onnx_file}: the file name must end in .onnx (its input columns "
                          f"are written beside it as <name>.features.json)")
    if onnx_file.is_dir():
        raise ConfigError(f"--onnx {onnx_file}: is a folder; give the ONNX file to write, such as "
                          f"{onnx_file / 'model.onnx'}")


def _versions(kind: str) -> dict[str, str]:
    from importlib import metadata

    out = {"hepprep": hepprep_version()}
    for name in _LIBRARIES[kind]:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _record(model: TrainedModel, target: Target, onnx_model, onnx_file: Path) -> dict:
    """What features.json and the ONNX metadata_props hold."""
    info = model.info
    if model.layout is not None:  # a tagger: constituents and mask (or images), and the jet features
        inputs = {"features": list(model.layout.jet_features), "inputs": tagger_inputs(model)}
    else:
        inputs = {"features": list(model.features),
                  "input": {"name": INPUT, "dtype": "float64", "shape": [None, len(model.features)],
                            "missing": "NaN (also +inf or -inf) means missing, as in the skim"}}
    return {
        "onnx": onnx_file.name,
        **inputs,
        "outputs": outputs_of(target),
        "opset": opsets_of(onnx_model),
        "target": target.stats_record() or {"kind": "binary"},
        "model": model.kind,
        "model_dir": str(model.path.resolve()),
        "model_info_sha256": file_sha256(model.path / MODEL_INFO),
        "prepared_dir": info.get("prepared_dir"),
        "prepared_fingerprint": info.get("prepared_fingerprint"),
        "exported_with": _versions(model.kind),
    }


def _body(model: TrainedModel, target: Target):
    if model.kind == "xgboost":
        from analysis.export.xgb import xgboost_body

        return xgboost_body(model.booster, len(model.features), target, source=str(model.path / "model.json"))
    from analysis.export.mlp import network_body

    return network_body(model.network, len(model.features), target, source=str(model.path / "model.pt"))


def onnx_scores(onnx_bytes: bytes, raw: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
    """onnxruntime's output, on the CPU, for raw rows (float64 ``(rows, features)``) or a
    tagger's inputs by name (`analysis.export.tagger.tagger_inputs`)."""
    ort = optional_import("onnxruntime", purpose="hepprep export")
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    feeds = raw if isinstance(raw, dict) else {INPUT: np.ascontiguousarray(raw, dtype=np.float64)}
    return session.run(None, {name: np.ascontiguousarray(value) for name, value in feeds.items()})[0]


def max_difference(target: Target, got: np.ndarray, expected: np.ndarray,
                   ratio_to: np.ndarray | None = None) -> float:
    """The largest difference between two answers of a model for the same rows.

    Probabilities: absolute. Regression: relative to the value, or to one standard deviation
    of the learnt value at that row where that is larger (``std``, times the value for
    "log", times ``ratio_to`` for "ratio"), so a prediction near 0 does not turn a float32
    rounding of the model's output into a large relative number. Not finite where only one of
    them is finite (or they are different infinities).
    """
    got = np.asarray(got, dtype=np.float64).reshape(np.shape(expected))
    expected = np.asarray(expected, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        same = (got == expected) | (np.isnan(got) & np.isnan(expected))  # NaN, ±inf alike on both
        if target.kind != "regression":
            difference = np.abs(got - expected)
        else:
            got, expected = got.reshape(len(got), -1), expected.reshape(len(expected), -1)
            spread = np.broadcast_to(np.asarray(target.std), expected.shape)
            if target.transform == "log":
                spread = spread * np.abs(expected)
            elif target.transform == "ratio":
                spread = spread * np.abs(np.asarray(ratio_to, dtype=np.float64))[:, None]
            difference = np.abs(got - expected) / np.maximum(np.abs(expected), spread)
        difference = np.where(same.reshape(difference.shape), 0.0, difference)
    return float(np.max(difference, initial=0.0))


def _check_rows(model: TrainedModel, target: Target, std: Standardisation) -> np.ndarray:
    """`CHECK_ROWS` raw rows, NaN and ±inf among them, except in a ``ratio_to`` column: there
    each value is finite and not 0, so every prediction is a number to compare."""
    raw = random_raw_rows(std, CHECK_ROWS)
    j = ratio_to_index(target, model.features, source=str(model.path / "stats.json"))
    if j is not None:
        bad = ~np.isfinite(raw[:, j]) | (raw[:, j] == 0)
        raw[bad, j] = std.mean[j] or std.std[j]
    return raw


def _self_check(onnx_bytes: bytes, model: TrainedModel, target: Target, std: Standardisation,
                onnx_file: Path) -> float:
    """The `max_difference` of ONNX and hepprep on `_check_rows`; a `HepprepError` above the tolerance."""
    import pyarrow as pa

    if model.layout is not None:
        feeds, table = tagger_check_inputs(model, target, CHECK_ROWS)
        got = onnx_scores(onnx_bytes, feeds)
    else:
        raw = _check_rows(model, target, std)
        table = pa.table({f: raw[:, j] for j, f in enumerate(model.features)})
        got = onnx_scores(onnx_bytes, raw)
    expected = model.predict(table, standardised=False)
    ratio_to = table.column(target.ratio_to).to_numpy() if target.ratio_to else None
    worst = max_difference(target, got, expected, ratio_to)
    regression = target.kind == "regression"
    tolerance = REGRESSION_TOLERANCE if regression else PROBABILITY_TOLERANCE
    if not worst <= tolerance:  # NaN too
        what = "predictions differ from hepprep's by up to a relative" if regression else \
            "probabilities differ from hepprep's by up to"
        raise HepprepError(f"{onnx_file}: not written: onnxruntime's {what} {worst:.3g} (tolerance {tolerance:g}) "
                           f"on {CHECK_ROWS} test {'jets' if model.layout is not None else 'rows'}; the converter for {model.kind} may have changed: "
                           "please report it")
    return worst


def run_export(model_dir: str | Path, onnx_file: str | Path, *, progress: bool = True) -> Path:
    """Write a model folder as ``onnx_file`` and its input record ``<stem>.features.json`` beside it.

    Parameters
    ----------
    model_dir : str or Path
        A model folder written by `hepprep train` (with its model_info.json).
    onnx_file : str or Path
        The ``.onnx`` file to write (its folder is created if needed).
    progress : bool
        A summary line on stderr.

    Returns
    -------
    Path
        ``onnx_file``. Its one input ``raw`` takes float64 ``(rows, features)``, the raw skim
        columns in features.json order (NaN: missing); a tagger's inputs are ``constituents``
        and ``mask`` (pfn, part) or ``images`` (cnn), and ``raw`` for its jet features
        (`analysis.export.tagger`). Its output is named in features.json.

    Raises
    ------
    StageInputError
        No such model folder, no model_info.json, or a damaged or inconsistent model file; a
        ``ratio`` target whose ``ratio_to`` column is not a feature (the graph's one input).
    ConfigError
        ``onnx_file`` does not end in .onnx, or is a folder.
    HepprepError
        onnx, onnxruntime or a converter is not installed; or the exported graph does not
        reproduce hepprep's predictions (nothing is written then).
    """
    onnx_file = Path(onnx_file)
    _check_destination(onnx_file)
    for module in ("onnx", "onnxruntime"):
        optional_import(module, purpose="hepprep export")
    model = load_model(model_dir)
    target = model.target
    std = Standardisation.from_stats(model.stats, model.features, source=str(model.path / "stats.json"))
    # Refused before the (slow) conversion: a ratio whose ratio_to column is no input.
    inputs = list(model.layout.jet_features) if model.layout is not None else model.features
    ratio_to_index(target, inputs, source=str(model.path / "stats.json"))
    onnx_model = tagger_graph(model, target) if model.layout is not None else assemble(_body(model, target), std, target)
    record = _record(model, target, onnx_model, onnx_file)
    # Every value as JSON text, so a reader of metadata_props parses them all one way.
    for key, value in record.items():
        onnx_model.metadata_props.add(key=f"hepprep.{key}", value=json.dumps(value))
    onnx_bytes = onnx_model.SerializeToString()
    worst = _self_check(onnx_bytes, model, target, std, onnx_file)
    onnx_file.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(features_file(onnx_file), record)
    try:
        write_bytes_atomic(onnx_file, onnx_bytes)
    except BaseException:
        # No record of a model that is not there (the ONNX file holds the record too).
        features_file(onnx_file).unlink(missing_ok=True)
        raise
    relative = " relative" if target.kind == "regression" else ""
    checked = f"; onnxruntime matches hepprep to {worst:.1e}{relative} on {CHECK_ROWS} rows"
    opset = ", ".join(f"{k} {v}" for k, v in record["opset"].items())
    if model.layout is not None:
        checked = checked.replace(f"{CHECK_ROWS} rows", f"{CHECK_ROWS} random jets")
        given = "inputs " + ", ".join(f"{spec['name']!r} {tuple('rows' if d is None else d for d in spec['shape'])}"
                                     for spec in record["inputs"])
    else:
        given = f"input {INPUT!r} ({len(model.features)} columns)"
    stage_console(quiet=not progress).print(
        f"export: {model.kind} ({target.kind}) -> {onnx_file}, {given}, output {record['outputs'][0]['name']!r}, "
        f"opset {opset}{checked}")
    return onnx_file
