"""The layers of docs/architecture.md are checked by `make lint` (lint-imports, the
contracts in pyproject.toml). Here: a copy of the package with one import that breaks a
layer fails the check, naming the import, and so does a loop between two stages."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-logo", "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture()
def tree(tmp_path) -> Path:
    """The package and its contracts, in a folder of their own."""
    shutil.copytree(ROOT / "edge", tmp_path / "edge", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def add_import(module: Path, line: str) -> None:
    text = module.read_text()
    cut = text.index("\nfrom edge.")
    module.write_text(text[:cut] + f"\n{line}" + text[cut:])


def test_the_tree_keeps_its_layers(tree):
    result = lint(tree)
    assert result.returncode == 0, result.stdout
    assert " kept, 0 broken." in result.stdout


def test_a_stage_importing_an_output_breaks_the_layers(tree):
    add_import(tree / "edge/pipeline/track.py", "from edge.outputs import metrics  # noqa")
    result = lint(tree)
    assert result.returncode == 1
    assert "edge.pipeline is not allowed to import edge.outputs" in result.stdout
    assert "edge.pipeline.track -> edge.outputs.metrics" in result.stdout


def test_a_loop_between_stages_breaks_the_contracts(tree):
    add_import(tree / "edge/pipeline/streamproc.py", "from edge.pipeline import capture  # noqa")
    result = lint(tree)
    assert result.returncode == 1
    assert "No cycles are allowed in edge.pipeline" in result.stdout, result.stdout
