"""Sample generator (generate stage): `hepprep generate --kind` — which generator writes the sample.

``events`` (the default): the di-tau analysis's NanoAOD samples (`analysis.generate.runner`);
``jets``: the PFNano jet samples (`analysis.generate.jets`). Each is imported only when asked for.
"""

from __future__ import annotations

from pathlib import Path

from analysis.config import Config
from analysis.errors import ConfigError

__all__ = ["KINDS", "generate_kind", "kind_settings"]

KINDS = ("events", "jets")


def generate_kind(kind: str, out_dir: str | Path, config: Config, *, progress: bool = True) -> Path:
    """Generate the sample of ``kind`` into ``out_dir``; its fileset's path (a one-line error for another kind)."""
    if kind == "jets":
        from analysis.generate.jets import generate_jet_samples

        return generate_jet_samples(out_dir, config, progress=progress)
    if kind == "events":
        from analysis.generate.runner import generate_samples

        return generate_samples(out_dir, config, progress=progress)
    raise _unknown(kind)


def kind_settings(kind: str, config: Config) -> dict:
    """What decides the files of a sample of ``kind`` (its generate.json; `hepprep run` compares it before reuse)."""
    if kind == "jets":
        from analysis.generate.jets import jet_generation_settings

        return jet_generation_settings(config)
    if kind == "events":
        from analysis.generate.runner import generation_settings

        return generation_settings(config)
    raise _unknown(kind)


def _unknown(kind: str) -> ConfigError:
    return ConfigError(f"--kind: {kind!r} is not a kind of sample; give {' or '.join(KINDS)}")
