"""House: the package layout keeps its shape — import contracts, no cycles, small modules, one of each shared thing.

The contracts live in pyproject.toml ([tool.importlinter]) and docs/ARCHITECTURE.md says
what they mean; `lint-imports` checks them here, so a stage that reaches into another,
or a processor that reaches into a stage, fails the suite.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tokenize
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("analysis", "processors")
MAX_LINES = 400


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def test_the_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_there_is_no_import_cycle_between_modules():
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & set(modules)) for m in modules}
    # Tarjan's strongly connected components: any component of two or more is a cycle.
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(modules)))
    for module in modules:
        if module not in index:
            visit(module)
    assert cycles == [], f"modules importing each other: {cycles}"


def test_no_module_is_over_400_lines():
    long = [f"{p.relative_to(REPO)}: {n}" for p in _sources()
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert long == [], f"split these before they grow further: {long}"


def _code_lines(path: Path):
    """(line number, code) with comments and string literals (docstrings, messages) blanked."""
    lines = path.read_text().splitlines(keepends=True)
    blanked = [list(line) for line in lines]
    with path.open("rb") as handle:
        for token in tokenize.tokenize(handle.readline):
            if token.type in (tokenize.COMMENT, tokenize.STRING):
                (row0, col0), (row1, col1) = token.start, token.end
                for row in range(row0, row1 + 1):
                    line = blanked[row - 1]
                    first = col0 if row == row0 else 0
                    last = col1 if row == row1 else len(line)
                    line[first:last] = " " * (last - first)
    for number, line in enumerate(blanked, start=1):
        code = "".join(line)
        if code.strip():
            yield number, code


def test_the_standardisation_formula_exists_once():
    # (x - mean) / std and its inverse, anywhere but the one Standardisation object
    formula = re.compile(r"-\s*(?:\w+\.)*mean\w*(?:\[[^\]]*\])?\)\s*/"
                         r"|\bstd\w*(?:\[[^\]]*\])?\s*\+\s*(?:\w+\.)*mean|\[\"std\"\]\s*\+|\*\s*s\[\"std\"\]")
    home = REPO / "analysis" / "core" / "standardise.py"
    found = [f"{p.relative_to(REPO)}:{n}: {code.strip()}" for p in _sources() if p != home
             for n, code in _code_lines(p) if formula.search(code)]
    assert found == [], "\n".join(found)


def test_the_feature_list_exists_once():
    # the registry spells out feature names; a second list of them would drift
    names = re.compile(r'"(?:m_vis|pt_vis|dr_tautau|mt_tau1|mt_tau2|mjj|ptjj|jdeta|pt_h)"')
    home = REPO / "analysis" / "core" / "features.py"
    found = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in _sources() if p != home
             for n, line in enumerate(p.read_text().splitlines(), start=1)
             if len(names.findall(line.split("#", 1)[0])) >= 3]
    assert found == [], "\n".join(found)


def test_public_names_are_unchanged():
    import analysis
    import processors

    expected = {"Config", "ConfigError", "HepprepError", "InputFileError", "StageInputError",
                "config_from_dict", "default_config", "load_config", "generate_samples", "run_skim",
                "run_prepare", "run_prepare_table", "run_train", "load_model", "run_evaluate",
                "run_pipeline", "dask_client", "submit_skim", "resubmit_failed", "job_states",
                "merge_job_manifests"}
    assert expected <= set(analysis.__all__)
    for name in analysis.__all__:
        assert callable(getattr(analysis, name)) or isinstance(getattr(analysis, name), type), name
    assert {"DiTauProcessor", "SKIM_SCHEMA", "FEATURES", "ditau_features"} <= set(processors.__all__)
