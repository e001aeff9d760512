"""House: the test suite keeps its shape — fixtures in conftest.py, the real CMS files through one fixture.

A fixture defined in a helper module and re-imported by each test module (with ``# noqa: F401``
on the import and ``# noqa: F811`` on every test taking it) hides real unused imports and
redefinitions from the linter; pytest finds conftest.py's fixtures by name, so nothing needs
importing. These checks read the source (ast), so they cost nothing at run time.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from _cms_helpers import SHARED_FIXTURES, CmsFixtures, find_cms_fixtures

TESTS = Path(__file__).resolve().parent
SOURCES = sorted(TESTS.rglob("*.py"))
OTHERS = [p for p in SOURCES if p != Path(__file__).resolve()]  # this file names the patterns it looks for
BENCHMARKS = sorted((TESTS.parent / "benchmarks").glob("*.py"))  # not pytest, but they import helpers
# An import of a module of the suite itself: a helper, another test module or conftest.
SUITE_MODULE = re.compile(r"^(tests\.)?(_\w+|test_\w+|conftest)$")


def _rel(path: Path) -> str:
    return str(path.relative_to(TESTS.parent))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _is_fixture(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Attribute) and target.attr == "fixture") or (
        isinstance(target, ast.Name) and target.id == "fixture")


def _fixtures(tree: ast.Module) -> set[str]:
    """Names of the pytest fixtures a module defines (at any depth)."""
    return {node.name for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and any(_is_fixture(d) for d in node.decorator_list)}


def _suite_imports(tree: ast.Module):
    """(line, module, names) of every `from <suite module> import names`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and SUITE_MODULE.match(node.module):
            yield node.lineno, node.module, [alias.name for alias in node.names]


def _suite_path(module: str) -> Path:
    return TESTS / f"{module.removeprefix('tests.')}.py"


def test_helper_modules_define_no_fixture():
    helpers = [p for p in SOURCES if p.name.startswith("_")]
    assert {p.name for p in helpers} >= {"_skim_helpers.py", "_prepare_helpers.py", "_train_helpers.py"}
    found = {_rel(p): sorted(names) for p in helpers if (names := _fixtures(_tree(p)))}
    assert found == {}, f"move these fixtures into tests/conftest.py (or the one module using them): {found}"


def test_no_module_imports_a_fixture_or_conftest():
    fixtures = {p: _fixtures(_tree(p)) for p in SOURCES}
    bad = []
    for path in SOURCES + BENCHMARKS:
        for line, module, names in _suite_imports(_tree(path)):
            source = _suite_path(module)
            if module.removeprefix("tests.") == "conftest":
                bad.append(f"{_rel(path)}:{line}: imports conftest")
            elif source in fixtures and (taken := sorted(fixtures[source] if "*" in names
                                                         else set(names) & fixtures[source])):
                bad.append(f"{_rel(path)}:{line}: imports fixture(s) {taken} from {module}")
    assert bad == [], ("take fixtures as arguments (from tests/conftest.py), never import them:\n"
                       + "\n".join(bad))


def test_no_noqa_for_a_reimported_fixture():
    bad = []
    for path in OTHERS:
        lines = path.read_text().splitlines()
        bad += [f"{_rel(path)}:{n}: {line.strip()}" for n, line in enumerate(lines, 1)
                if "noqa: F811" in line]
        for line_no, _, _ in _suite_imports(_tree(path)):
            if "noqa: F401" in lines[line_no - 1]:
                bad.append(f"{_rel(path)}:{line_no}: {lines[line_no - 1].strip()}")
    assert bad == [], "the re-imported fixture pattern is back:\n" + "\n".join(bad)


def _docstrings(tree: ast.Module) -> set[int]:
    nodes = [tree] + [n for n in ast.walk(tree)
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    return {id(n.body[0].value) for n in nodes
            if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


def test_the_shared_fixtures_folder_is_named_in_one_place():
    """Only tests/_cms_helpers.py builds the ../shared/fixtures path; tests take `cms_fixtures`."""
    bad = []
    for path in OTHERS:
        if path.name == "_cms_helpers.py":
            continue
        tree = _tree(path)
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
                    and (node.value == "shared" or "shared/fixtures" in node.value)):
                bad.append(f"{_rel(path)}:{node.lineno}: {node.value!r}")
            if isinstance(node, ast.Name) and node.id == "SHARED_FIXTURES":
                bad.append(f"{_rel(path)}:{node.lineno}: SHARED_FIXTURES")
    assert bad == [], "reach the real CMS files through the cms_fixtures fixture:\n" + "\n".join(bad)


def test_cms_fixtures_finds_the_three_real_files(cms_fixtures, nano_dy_path):
    assert isinstance(cms_fixtures, CmsFixtures)
    assert cms_fixtures.nano_dy == nano_dy_path == SHARED_FIXTURES / "nano_dy.root"
    for path in (cms_fixtures.nano_dy, cms_fixtures.nano_dy_rntuple, cms_fixtures.pfnano):
        assert path.parent == SHARED_FIXTURES and path.is_file()
        assert path.read_bytes()[:4] == b"root"  # a ROOT file, not a Git LFS pointer


def test_missing_cms_fixtures_name_the_shared_folder(tmp_path):
    (tmp_path / "nano_dy.root").write_bytes(b"root")
    with pytest.raises(FileNotFoundError, match=r"nano_dy_rntuple\.root, pfnano\.root missing.*"
                                                r"\.\./shared/fixtures"):
        find_cms_fixtures(tmp_path)
