"""The layout's rules (README, "What is in the tree"): packages import each other only downwards,
nothing edits sys.path, scripts/ holds thin programs, and one complexity gate covers every function."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGES = ("handler", "kserve_server", "imdb_client", "imdb_training", "imdb_ops", "imdb_bench")
BIN = Path(sys.executable).parent


def tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [REPO / line for line in out.splitlines() if (REPO / line).exists()]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter on the packages under ``root`` (its pyproject.toml's contracts), ``root`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(BIN / "lint-imports"), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_no_file_edits_sys_path():
    """Packages are importable after `make install`; no module, script or test reaches around that."""
    edit = re.compile(r"sys\.path\s*(\.insert|\.append|\.extend|\[|\+?=)|site\.addsitedir")
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for path in tracked("*.py", "*.sh", "Makefile")
        if path != Path(__file__).resolve()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if edit.search(line)
    ]
    assert offenders == []


def test_the_import_contracts_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "broken" in result.stdout and " 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("handler/core.py", "import imdb_training.data", "Layers point down"),
        ("handler/model.py", "import handler.taps", "Inside handler/"),
        ("handler/text.py", "import ts.context", "imports neither server"),
        ("kserve_server/batcher.py", "import handler.torchserve_metrics", "runs without TorchServe"),
        ("imdb_client/answers.py", "import handler.core", "The client never imports the server side"),
    ],
)
def test_an_import_against_the_rules_breaks_a_contract(tmp_path, module, line, contract):
    """The contracts bite: one forbidden import added to a copy of the tree is reported by name."""
    for name in PACKAGES:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # added by the test\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken.replace("\n", " "), result.stdout[-3000:]


def test_scripts_are_thin_programs_calling_one_package():
    """Each scripts/*.py: a usage docstring and one import of a package's main (the logic lives in packages)."""
    for path in (REPO / "scripts").glob("*.py"):
        tree = ast.parse(path.read_text())
        imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        sources = {n.module.split(".")[0] for n in imports if isinstance(n, ast.ImportFrom)}
        assert (ast.get_docstring(tree) or "").lower().count("usage:") == 1, path.name
        assert sources <= set(PACKAGES) and len(sources) == 1, (path.name, sources)
        assert not [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))], path.name
        assert len(path.read_text().splitlines()) < 30, path.name


def test_the_complexity_gate_fails_a_function_above_ten(tmp_path):
    """make lint's gate (xenon over radon, rank B: at most 10) passes the tree and fails an 11-branch function."""
    gate = [str(BIN / "xenon"), "--max-absolute", "B"]
    ok = subprocess.run([*gate, *PACKAGES, "scripts", "tests"], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-3000:]
    branches = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(10))
    (tmp_path / "busy.py").write_text(f"def busy(x):\n{branches}    return -1\n")
    bad = subprocess.run([*gate, str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode != 0 and "busy" in bad.stderr
