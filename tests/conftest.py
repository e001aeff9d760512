"""Shared pytest fixtures: paths to the real-file fixtures in ../shared/fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def nano_dy_path() -> Path:
    """A real CMS Run 2 NanoAOD file (40 Drell-Yan events) from coffea's test samples."""
    path = SHARED_FIXTURES / "nano_dy.root"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the shared fixtures must sit beside the checkout (../shared)")
    return path
