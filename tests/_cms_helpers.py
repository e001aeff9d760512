"""The real CMS files in ../shared/fixtures (beside the checkout), found in one place.

Tests reach them through the session fixture `cms_fixtures` (conftest.py; `nano_dy_path` is
built on it); `find_cms_fixtures` is the plain function behind it, for code run outside pytest
(``python tests/test_skim_fuzz.py CASE OUT.root``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

SHARED_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


@dataclass(frozen=True)
class CmsFixtures:
    """Paths of the three real CMS files (coffea's test samples, ../shared/fixtures/README.md)."""

    nano_dy: Path  # CMS Run 2 NanoAOD, 40 Drell-Yan events, a TTree
    nano_dy_rntuple: Path  # the same 40 events as an RNTuple
    pfnano: Path  # CMS PFNano, 10 events, particle-flow candidates


def find_cms_fixtures(folder: Path = SHARED_FIXTURES) -> CmsFixtures:
    """The three files in `folder`; FileNotFoundError naming ../shared/fixtures if one is missing."""
    found = CmsFixtures(**{f.name: folder / f"{f.name}.root" for f in fields(CmsFixtures)})
    missing = [p.name for p in vars(found).values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder}: {', '.join(missing)} missing; the real CMS fixtures must sit in ../shared/fixtures "
            "beside the checkout (see ../shared/fixtures/README.md)")
    return found


__all__ = ["SHARED_FIXTURES", "CmsFixtures", "find_cms_fixtures"]
