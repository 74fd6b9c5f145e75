"""tools/install.sh and tools/uninstall.sh, run into a temporary root (--root).

--no-deps: no apt, no venv, no downloads, so only the file layout is tested
here; the venv steps are the Makefile's, which `make test` runs anyway.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from edge import config as config_mod
from edge.catalog import load_catalog

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "tools" / "install.sh"
UNINSTALL = REPO / "tools" / "uninstall.sh"


def run(script: Path, *args: str) -> str:
    out = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def install(root: Path) -> str:
    return run(INSTALL, "--root", str(root), "--no-deps")


def tree(root: Path) -> dict[str, tuple]:
    """Every path under root: type, mode, mtime and content (or link target)."""
    state = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            what = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            what = "dir"
        state[str(path.relative_to(root))] = (stat.filemode(st.st_mode), st.st_mtime_ns, what)
    return state


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Installed twice into the same root: (root, first output, second output, trees)."""
    root = tmp_path_factory.mktemp("root")
    first = install(root)
    before = tree(root)
    second = install(root)
    return root, first, second, before, tree(root)


def test_second_run_changes_nothing(installed):
    root, first, second, before, after = installed
    assert before == after
    assert "installed" not in second, second
    assert f"kept existing {root}/etc/edge/config.yaml" in second
    assert f"kept existing {root}/etc/edge/edge.env" in second


def test_files_in_place(installed):
    root = installed[0]
    opt, etc = root / "opt/edge", root / "etc/edge"
    unit = root / "etc/systemd/system/edge.service"
    assert unit.read_bytes() == (REPO / "systemd/edge.service").read_bytes()
    for name in (
        "edge/cli.py",
        "edge/outputs/notify.py",
        "pyproject.toml",
        "requirements/runtime.txt",
        "models/manifest.yaml",
        "ads/catalog.yaml",
        "config.example.yaml",
    ):
        assert (opt / name).is_file(), name
    assert not list(opt.rglob("__pycache__"))  # built on the box, not copied
    assert (etc / "ads/catalog.yaml").read_bytes() == (REPO / "ads/catalog.yaml").read_bytes()
    load_catalog(etc / "ads/catalog.yaml")  # creatives came along
    assert (etc / "edge.env").read_bytes() == (REPO / "systemd/edge.env.example").read_bytes()
    assert not (root / "etc/systemd/system/multi-user.target.wants").exists()  # no systemctl


def test_checked_models_are_copied(installed):
    opt = installed[0] / "opt/edge/models"
    manifest = yaml.safe_load((REPO / "models/manifest.yaml").read_text())["models"]
    for spec in manifest.values():
        source = REPO / "models" / spec["file"]
        good = (
            source.is_file() and hashlib.sha256(source.read_bytes()).hexdigest() == spec["sha256"]
        )
        if good:
            assert hashlib.sha256((opt / spec["file"]).read_bytes()).hexdigest() == spec["sha256"]
        else:
            assert spec["file"] in installed[1]  # reported as not fetched


def test_modes(installed):
    root = installed[0]
    assert stat.S_IMODE((root / "etc/edge/edge.env").stat().st_mode) == 0o600
    # Camera URLs may carry passwords: root's alone (the unit hands the service a copy).
    assert stat.S_IMODE((root / "etc/edge/config.yaml").stat().st_mode) == 0o600
    # Everything else is read by the service's dynamic user: readable by others.
    for path in [
        *(root / "opt/edge").rglob("*"),
        root / "etc/systemd/system/edge.service",
    ]:
        assert path.stat().st_mode & stat.S_IROTH, path


def test_installed_config_points_at_installed_paths(installed):
    root = installed[0]
    cfg = config_mod.load(root / "etc/edge/config.yaml")
    assert cfg.models.dir == "/opt/edge/models"
    assert cfg.selector.catalog == "/etc/edge/ads/catalog.yaml"
    # Nothing else differs from the repo's config.yaml.
    repo = config_mod.load(REPO / "config.yaml")
    assert cfg.state_dir == "/var/lib/edge"  # the unit's StateDirectory=, for edge check too
    assert cfg == dataclasses.replace(
        repo,
        models=dataclasses.replace(repo.models, dir=cfg.models.dir),
        selector=dataclasses.replace(repo.selector, catalog=cfg.selector.catalog),
        base_dir=cfg.base_dir,
        state_dir=cfg.state_dir,
    )


def test_operator_files_survive_and_code_is_replaced(tmp_path):
    install(tmp_path)
    config = tmp_path / "etc/edge/config.yaml"
    env = tmp_path / "etc/edge/edge.env"
    catalog = tmp_path / "etc/edge/ads/catalog.yaml"
    config.write_text(config.read_text().replace("store_id: store1", "store_id: shop42"))
    env.write_text("EDGE_MQTT_PASSWORD=secret\n")
    catalog.write_text(catalog.read_text() + "# edited\n")
    stale = tmp_path / "opt/edge/edge/removed_module.py"  # as if deleted upstream
    stale.write_text("")
    edited = {p: p.read_bytes() for p in (config, env, catalog)}

    out = install(tmp_path)
    assert {p: p.read_bytes() for p in edited} == edited
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert f"kept existing {tmp_path}/etc/edge/ads" in out
    assert config_mod.load(config).mqtt.store_id == "shop42"
    assert not stale.exists()
    assert f"installed {tmp_path}/opt/edge/edge" in out


def test_uninstall_keeps_configuration_unless_purged(tmp_path):
    install(tmp_path)
    # What DynamicUser= + StateDirectory= leave: the state and a link to it.
    (tmp_path / "var/lib/private/edge").mkdir(parents=True)
    (tmp_path / "var/lib/private/edge/outbox.jsonl").write_text("{}\n")
    (tmp_path / "var/lib/edge").symlink_to("private/edge")

    for _ in range(2):
        run(UNINSTALL, "--root", str(tmp_path))
        assert not (tmp_path / "opt/edge").exists()
        assert not (tmp_path / "etc/systemd/system/edge.service").exists()
        assert (tmp_path / "etc/edge/config.yaml").is_file()
        assert (tmp_path / "etc/edge/edge.env").is_file()
        assert (tmp_path / "var/lib/edge/outbox.jsonl").is_file()

    for _ in range(2):
        run(UNINSTALL, "--root", str(tmp_path), "--purge")
        assert not (tmp_path / "etc/edge").exists()
        assert not (tmp_path / "var/lib/edge").is_symlink()
        assert not (tmp_path / "var/lib/private/edge").exists()


def test_reinstall_after_uninstall_restores_the_tree(tmp_path):
    install(tmp_path)
    files = {k for k, v in tree(tmp_path).items() if v[0][0] == "-"}
    run(UNINSTALL, "--root", str(tmp_path))
    install(tmp_path)
    assert {k for k, v in tree(tmp_path).items() if v[0][0] == "-"} == files


@pytest.mark.parametrize("script", [INSTALL, UNINSTALL])
def test_unknown_option_is_refused(script, tmp_path):
    out = subprocess.run(
        [str(script), "--root", str(tmp_path), "--frobnicate"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 64
    assert "--frobnicate" in out.stderr and "Usage:" in out.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck is not installed")
def test_scripts_pass_shellcheck():
    out = subprocess.run(
        ["shellcheck", str(INSTALL), str(UNINSTALL)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout
