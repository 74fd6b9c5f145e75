"""The lock files (requirements/*.lock, `make lock`) agree with requirements/*.txt and
pyproject.toml, hash every file, and are what the Makefile and the installer install."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement

from conftest import ROOT

REQ = ROOT / "requirements"
SETS = ("runtime", "dev", "insightface")


def requirements(path) -> list[Requirement]:
    lines = [line.split(" #")[0].strip() for line in path.read_text().splitlines()]
    return [Requirement(line) for line in lines if line and not line.startswith("#")]


def locked(path) -> dict[tuple[str, str], tuple[str, list[str]]]:
    """(name, marker) -> (version, hashes) of a lock file."""
    entries: dict[tuple[str, str], tuple[str, list[str]]] = {}
    text = path.read_text()
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = block.split("\\", 1)[0].strip()
        if not head or head.startswith("#"):
            continue
        requirement = Requirement(head)
        (spec,) = requirement.specifier
        key = (canonical(requirement.name), str(requirement.marker or ""))
        entries[key] = (spec.version, re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return entries


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize("name", SETS)
def test_every_locked_file_has_a_hash_and_an_exact_version(name):
    entries = locked(REQ / f"{name}.lock")
    assert entries
    for (package, _), (version, hashes) in entries.items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), (package, version)
        assert hashes, f"{name}.lock: {package} has no hash"


@pytest.mark.parametrize("name", SETS)
def test_the_lock_agrees_with_the_requirements(name):
    """Every pin of requirements/NAME.txt is in NAME.lock at that version: `make lock`
    was run after the last edit (the lead reruns it after merging other branches)."""
    entries = locked(REQ / f"{name}.lock")
    by_name: dict[str, list[tuple[str, str]]] = {}
    for (package, marker), (version, _) in entries.items():
        by_name.setdefault(package, []).append((marker, version))
    for requirement in requirements(REQ / f"{name}.txt"):
        specs = list(requirement.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", (
            f"{name}.txt: pin {requirement} to one version"
        )
        found = by_name.get(canonical(requirement.name))
        assert found, f"{requirement.name} is in {name}.txt but not in {name}.lock: run make lock"
        assert specs[0].version in {v for _, v in found}, (
            f"{name}.txt pins {requirement}, {name}.lock has {found}: run make lock"
        )


def test_one_onnx_runtime_per_platform_and_exact_everywhere():
    entries = locked(REQ / "runtime.lock")
    runtimes = {k: v[0] for k, v in entries.items() if k[0] in ("onnxruntime", "onnxruntime-gpu")}
    assert set(name for name, _ in runtimes) == {"onnxruntime", "onnxruntime-gpu"}
    gpu = next(m for (n, m) in runtimes if n == "onnxruntime-gpu")
    cpu = next(m for (n, m) in runtimes if n == "onnxruntime")
    assert "x86_64" in gpu and "x86_64" in cpu and gpu != cpu  # never both on one box
    # What onnx and onnxruntime pull in is pinned in requirements too, not only locked.
    pinned = {canonical(r.name) for r in requirements(REQ / "runtime.txt")}
    assert {"protobuf", "flatbuffers", "ml-dtypes"} <= pinned


def test_dev_tools_use_the_runtime_versions():
    runtime = {k[0]: v[0] for k, v in locked(REQ / "runtime.lock").items()}
    for (package, _), (version, _) in locked(REQ / "dev.lock").items():
        if package in runtime:
            assert version == runtime[package], package
    insightface = {k[0]: v[0] for k, v in locked(REQ / "insightface.lock").items()}
    for package, version in insightface.items():  # installed after the runtime, --no-deps
        if package in runtime:
            assert version == runtime[package], package


def test_pyproject_takes_its_dependencies_from_the_locked_runtime_set():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    files = project["tool"]["setuptools"]["dynamic"]["dependencies"]["file"]
    assert files == ["requirements/runtime.txt"]


def test_make_and_the_installer_install_the_locks_with_hashes():
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes" in makefile
    for name in SETS:
        assert f"requirements/{name}.lock" in makefile
    assert re.search(r"^lock:", makefile, re.M)
    install = (ROOT / "tools" / "install.sh").read_text()
    assert "--require-hashes" in install
    assert "runtime.lock" in install and "insightface.lock" in install
    assert "requirements/runtime.txt" not in install  # never unhashed
    assert "make" in (ROOT / ".ci" / "run").read_text()
