"""Skim stage: finding the processor a configuration names (``[skim] processor``, ``--processor``).

A processor is named as ``package.module:Class`` (importable) or ``path/to/file.py:Class``
(a file of the user's, anywhere). The class must be a `processors.base.SkimProcessor`. A
processor from a file is pickled by value to the executor's workers, which could not
import it by name.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import cloudpickle

from analysis.errors import ConfigError
from processors.base import SkimProcessor

__all__ = ["DEFAULT_PROCESSOR", "load_processor", "load_processor_class", "portable_spec"]

DEFAULT_PROCESSOR = "processors.ditau:DiTauProcessor"


def _module_from_file(path: Path, spec_text: str) -> Any:
    if not path.is_file():
        raise ConfigError(f"skim.processor {spec_text!r}: no such file {path}")
    # A stable module name per file: the same file loaded twice is one module.
    name = f"hepprep_user_processor_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"skim.processor {spec_text!r}: {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - the user's file: say what broke, in one line
        del sys.modules[name]
        raise ConfigError(f"skim.processor {spec_text!r}: importing {path} raised {type(err).__name__}: "
                          f"{' '.join(str(err).split())}") from None
    cloudpickle.register_pickle_by_value(module)
    return module


def load_processor_class(spec_text: str) -> type[SkimProcessor]:
    """The `SkimProcessor` subclass named by ``module:Class`` or ``file.py:Class``.

    Raises
    ------
    ConfigError
        One line: a malformed name, a module or file that cannot be imported, no such
        class, or a class that is not a `SkimProcessor`.
    """
    module_text, sep, class_name = spec_text.rpartition(":")
    if not sep or not module_text or not class_name.isidentifier():
        raise ConfigError(f"skim.processor {spec_text!r}: give it as package.module:Class or "
                          f"path/to/file.py:Class")
    if module_text.endswith(".py") or "/" in module_text or "\\" in module_text:
        module = _module_from_file(Path(module_text).expanduser(), spec_text)
    else:
        try:
            module = importlib.import_module(module_text)
        except ImportError as err:
            raise ConfigError(f"skim.processor {spec_text!r}: cannot import {module_text} ({err})") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        names = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, SkimProcessor)
                       and v is not SkimProcessor)
        raise ConfigError(f"skim.processor {spec_text!r}: {module_text} has no class {class_name}"
                          + (f" (its processors: {', '.join(names)})" if names else ""))
    if not (isinstance(cls, type) and issubclass(cls, SkimProcessor)):
        raise ConfigError(f"skim.processor {spec_text!r}: {class_name} is not a processors.SkimProcessor "
                          "(subclass it and implement select(events, cutflow))")
    return cls


def portable_spec(spec_text: str) -> str:
    """``spec_text`` with a processor file's path made absolute (batch jobs run from elsewhere)."""
    module_text, sep, class_name = spec_text.rpartition(":")
    if sep and (module_text.endswith(".py") or "/" in module_text or "\\" in module_text):
        return f"{Path(module_text).expanduser().resolve()}:{class_name}"
    return spec_text


def load_processor(config: Any, *, out_dir: str, chunk_tree: Any = None) -> SkimProcessor:
    """The configured processor, its options validated, ready to run the skim into ``out_dir``."""
    cls = load_processor_class(config.skim.processor)
    return cls(cls.options_from(config), lumi_pb=config.lumi_pb, out_dir=out_dir, chunk_tree=chunk_tree,
               input_profiles=config.skim.input_profiles)
