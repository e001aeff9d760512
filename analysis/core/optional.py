"""Optional back-ends (all stages): import them through one helper that names the install command."""

from __future__ import annotations

import importlib
from types import ModuleType

from analysis.errors import HepprepError

__all__ = ["optional_import"]

# module name -> (pip extra of hepprep, plain pip requirement)
_EXTRAS = {
    "torch": ("torch", "torch"),
    "dask_jobqueue": ("cluster", "dask-jobqueue"),
    "fsspec_xrootd": ("xrootd", "fsspec-xrootd"),
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnx", "onnxruntime"),
    "onnxmltools": ("onnx", "onnxmltools"),
    "onnxscript": ("onnx", "onnxscript"),  # torch.onnx's exporter (the network)
    "h5py": ("hdf5", "h5py"),  # the HDF5 exports of jet-level datasets
}


def optional_import(module: str, *, purpose: str) -> ModuleType:
    """Import an optional dependency or fail with the exact command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra, requirement = _EXTRAS.get(module, (None, module))
        how = f"pip install 'hepprep[{extra}]'" if extra else f"pip install {requirement}"
        raise HepprepError(f"{purpose} needs the optional package {requirement!r}: {how}") from None
