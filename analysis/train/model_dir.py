"""Training stage: what both models share — device choice and the model directory's files.

A model directory (DESIGN.md "Models and evaluation") holds the model file, `features.json`,
a copy of the prepared `stats.json`, `history.json` and `model_info.json`. Every file is
written atomically (temp file + rename) and `model_info.json` last, so a directory with a
`model_info.json` is complete: `predict.load_model` and evaluation rely on that.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from analysis.core.io import remove_stale_temp, write_json_atomic
from analysis.errors import ConfigError, StageInputError

__all__ = ["MODEL_INFO", "cuda_gpu_count", "finish_model_dir", "load_network_state", "resolve_device",
           "start_model_dir"]

MODEL_INFO = "model_info.json"  # written last: its presence marks a complete model directory


def cuda_gpu_count() -> int:
    """NVIDIA GPUs visible to this process (0 when there is no driver or none is visible).

    Uses torch when it is installed, else ``nvidia-smi -L``; honours CUDA_VISIBLE_DEVICES.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    try:
        import torch
        return torch.cuda.device_count()
    except ImportError:
        pass
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return 0
    count = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    if visible is not None:
        count = min(count, len([v for v in visible.split(",") if v.strip()]))
    return count


def _backend_has_cuda(model: str) -> tuple[bool, str]:
    if model == "xgboost":
        import xgboost
        ok = bool(xgboost.build_info().get("USE_CUDA"))
        return ok, "" if ok else "this xgboost build has no CUDA support (pip install xgboost from PyPI on Linux x86_64 has it)"
    try:
        import torch
    except ImportError:
        return False, "torch is not installed (pip install 'hepprep[torch]' with a CUDA build of torch)"
    ok = torch.backends.cuda.is_built()
    return ok, "" if ok else f"this torch build ({torch.__version__}) has no CUDA support: install a CUDA build of torch"


def resolve_device(requested: str, *, model: str) -> str:
    """Turn ``auto|cpu|cuda`` into the device a model trains on.

    Parameters
    ----------
    requested : str
        ``auto`` (CUDA when a GPU and a CUDA-enabled backend are present, else CPU),
        ``cpu`` or ``cuda``.
    model : str
        ``xgboost`` or ``mlp``: whose backend must have CUDA support.

    Raises
    ------
    ConfigError
        ``cuda`` asked for but no GPU is visible or the backend lacks CUDA, or an unknown value.
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {requested!r}: unknown device; use auto, cpu or cuda")
    if requested == "cpu":
        return "cpu"
    built, why_not = _backend_has_cuda(model)
    gpus = cuda_gpu_count() if built else 0
    if requested == "auto":
        return "cuda" if gpus else "cpu"
    if not built:
        raise ConfigError(f"--device cuda: {why_not}; use --device cpu or auto")
    if not gpus:
        raise ConfigError("--device cuda: no CUDA GPU is visible to this process (no driver, "
                          "or CUDA_VISIBLE_DEVICES hides them); use --device cpu or auto")
    return "cuda"


def start_model_dir(out_dir: str | Path) -> Path:
    """Create the model directory; a stale `model_info.json` goes first, so a run that stops
    half-way never leaves a directory that looks complete."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_INFO).unlink(missing_ok=True)
    remove_stale_temp(out)  # temporaries of a run that was killed while writing
    return out


def finish_model_dir(out: Path, *, features: list[str], stats: dict, history: dict,
                     info: dict) -> Path:
    """Write features.json, stats.json, history.json, then model_info.json (the marker)."""
    write_json_atomic(out / "features.json", list(features))
    write_json_atomic(out / "stats.json", stats)
    write_json_atomic(out / "history.json", history)
    write_json_atomic(out / MODEL_INFO, info)
    return out


def load_network_state(net, path: Path, retrain: str):
    """Load ``path/model.pt`` (a state dict of tensors only) into ``net``; the network in eval mode.

    Raises
    ------
    StageInputError
        One line: the file is missing, holds more than tensors, is unreadable, or does not
        fit the network model_info.json describes.
    """
    import pickle

    import torch

    file = path / "model.pt"
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StageInputError(f"{file}: missing{retrain}") from None
    except pickle.UnpicklingError:
        raise StageInputError(f"{file}: holds more than tensors (refused: a model file is data, not "
                              f"code){retrain}") from None
    except Exception as err:  # noqa: BLE001 - truncated zip, not a torch file, ...
        raise StageInputError(f"{file}: not a readable torch state dict ({type(err).__name__}){retrain}") from None
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StageInputError(f"{file}: does not fit the network of {MODEL_INFO} ({first[:200]}){retrain}") from None
    return net.eval()
