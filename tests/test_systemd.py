"""systemd/edge.service: systemd's own parser accepts it, and it says what we mean.

`systemd-analyze verify` needs no running systemd, but it reports an unknown
key or a bad value only as a warning (exit status 0), so any output at all
counts as a failure here. It also checks that ExecStart's program exists:
the copy it verifies points ExecStart at a stand-in in a temporary folder;
every other line is the real unit's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "edge.service"
EXEC = "/opt/edge/venv/bin/edge"


def unavailable(message: str):
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: the unit must be verified)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def analyze() -> str:
    """systemd-analyze, installed from Debian (systemd package) when missing and root."""
    found = shutil.which("systemd-analyze")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "systemd"],
            env=env,
            capture_output=True,
            timeout=600,
        )
        found = shutil.which("systemd-analyze")
    if found is None:
        unavailable("systemd-analyze is not installed and could not be (needs root and apt)")
    return found


def verify(analyze: str, tmp_path: Path, text: str, name: str = "edge.service") -> tuple[int, str]:
    """Exit status and all output of `systemd-analyze verify` on `text` as a unit file."""
    stand_in = tmp_path / "edge"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    assert EXEC in text
    unit = tmp_path / name
    unit.write_text(text.replace(EXEC, str(stand_in)))
    out = subprocess.run(
        [analyze, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    return out.returncode, (out.stdout + out.stderr).strip()


def directives(text: str) -> dict[str, list[str]]:
    """'Section.Key' -> values in order (keys may repeat)."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


def test_unit_verifies_cleanly(analyze, tmp_path):
    status, output = verify(analyze, tmp_path, UNIT.read_text())
    assert status == 0 and output == "", output


@pytest.mark.parametrize(
    "change, complaint",
    [
        (("WatchdogSec=30", "WatchdogSec=30\nWatchDogSecs=30"), "Unknown key"),
        (("Restart=on-failure", "Restart=sometimes"), "restart specifier"),
    ],
)
def test_verify_catches_a_broken_unit(analyze, tmp_path, change, complaint):
    # Both only warn (exit 0): proof that the empty-output check above can fail.
    text = UNIT.read_text()
    assert change[0] in text
    status, output = verify(analyze, tmp_path, text.replace(change[0], change[1], 1))
    assert complaint in output, output


def test_service_behaviour():
    d = directives(UNIT.read_text())
    one = {key: values[-1] for key, values in d.items()}
    assert one["Service.Type"] == "notify"
    assert one["Service.NotifyAccess"] == "main"
    # config.yaml is root's alone (tools/install.sh): the service reads systemd's copy
    assert one["Service.ExecStart"] == f"{EXEC} --config %d/config.yaml run"
    assert "config.yaml:/etc/edge/config.yaml" in d["Service.LoadCredential"]
    assert one["Service.WatchdogSec"] == "30"
    assert int(one["Service.TimeoutStartSec"]) >= 60  # model load on a slow box
    assert 5 < int(one["Service.TimeoutStopSec"]) <= 30  # the service stops within 5 s
    assert one["Service.Restart"] == "on-failure"
    assert 1 <= int(one["Service.RestartSec"]) <= 30
    assert one["Service.RestartPreventExitStatus"] == "78"  # EX_CONFIG, edge/errors.py
    for key in ("Unit.Wants", "Unit.After"):
        assert set(one[key].split()) == {
            "network-online.target",
            "mosquitto.service",
            "time-sync.target",  # event times are the wall clock's: start once it is set
        }
    assert "Unit.Requires" not in d  # a remote broker is fine
    assert one["Service.StandardOutput"] == one["Service.StandardError"] == "journal"
    assert one["Service.SyslogIdentifier"] == "edge"
    assert one["Install.WantedBy"] == "multi-user.target"


def test_service_hardening():
    text = UNIT.read_text()
    d = directives(text)
    one = {key: values[-1] for key, values in d.items()}
    expected = {
        "DynamicUser": "yes",
        "StateDirectory": "edge",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "DevicePolicy": "closed",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "SystemCallArchitectures": "native",
        "EnvironmentFile": "-/etc/edge/edge.env",
    }
    for key, value in expected.items():
        assert one.get(f"Service.{key}") == value, key
    assert "video" in one["Service.SupplementaryGroups"].split()
    allowed = d["Service.DeviceAllow"]
    assert "char-video4linux rw" in allowed
    assert {"char-nvidia-frontend rw", "char-nvidia-uvm rw"} <= set(allowed)
    assert all(re.fullmatch(r"(char-[\w-]+|/dev/\S+) rw?m?", a) for a in allowed), allowed
    assert set(one["Service.RestrictAddressFamilies"].split()) <= {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
    }
    # Secrets live in the EnvironmentFile only (comments may name the variables).
    active = [line for line in text.splitlines() if not line.lstrip().startswith(("#", ";"))]
    assert not [line for line in active if "PASSWORD" in line.upper()]
    assert "Service.Environment" not in d or not any(
        "EDGE_MQTT" in v for v in d["Service.Environment"]
    )
    assert "Service.User" not in d and "Service.Group" not in d  # DynamicUser decides


def test_env_template_holds_no_secret():
    lines = (ROOT / "systemd" / "edge.env.example").read_text().splitlines()
    names = {line.lstrip("#").split("=")[0] for line in lines if "=" in line}
    assert {"EDGE_MQTT_USERNAME", "EDGE_MQTT_PASSWORD"} <= names
    assert all(line.startswith("#") or not line.strip() for line in lines)  # all commented


PHOTO_UNIT = ROOT / "systemd" / "edge-photo.service"


def test_photo_unit_verifies_and_is_hardened_like_the_service(analyze, tmp_path):
    """systemd/edge-photo.service (`edge serve`): verified by systemd's parser, and the
    service's hardening minus cameras and the state folder."""
    status, output = verify(analyze, tmp_path, PHOTO_UNIT.read_text(), "edge-photo.service")
    assert status == 0 and output == "", output
    photo = {k: v[-1] for k, v in directives(PHOTO_UNIT.read_text()).items()}
    service = {k: v[-1] for k, v in directives(UNIT.read_text()).items()}
    assert photo["Service.ExecStart"] == f"{EXEC} --config /etc/edge/config.yaml serve"
    assert photo["Service.Type"] == "notify" and photo["Service.RestartPreventExitStatus"] == "78"
    assert "Service.StateDirectory" not in photo and "Service.SupplementaryGroups" not in photo
    assert "char-video4linux rw" not in directives(PHOTO_UNIT.read_text())["Service.DeviceAllow"]
    for key, value in service.items():
        if (
            key.startswith("Service.")
            and key.split(".")[1]
            in (
                "DynamicUser ProtectSystem ProtectHome PrivateTmp NoNewPrivileges DevicePolicy "
                "CapabilityBoundingSet UMask ProtectKernelTunables ProtectKernelModules "
                "ProtectControlGroups RestrictNamespaces LockPersonality SystemCallArchitectures "
                "SystemCallFilter RestrictAddressFamilies EnvironmentFile"
            ).split()
        ):
            assert photo[key] == value, key


HQ_UNIT = ROOT / "systemd" / "edge-hq.service"


def test_hq_unit_verifies_and_is_hardened_like_the_service(analyze, tmp_path):
    """systemd/edge-hq.service (`edge hq`, docs/hq.md): verified by systemd's parser,
    and the service's hardening with no devices at all and no state folder."""
    status, output = verify(analyze, tmp_path, HQ_UNIT.read_text(), "edge-hq.service")
    assert status == 0 and output == "", output
    d = directives(HQ_UNIT.read_text())
    hq = {k: v[-1] for k, v in d.items()}
    service = {k: v[-1] for k, v in directives(UNIT.read_text()).items()}
    assert hq["Service.ExecStart"] == f"{EXEC} hq %d/hq.yaml"
    assert "hq.yaml:/etc/edge/hq.yaml" in d["Service.LoadCredential"]
    assert hq["Service.Type"] == "notify" and hq["Service.RestartPreventExitStatus"] == "78"
    assert hq["Service.Restart"] == "on-failure"
    assert "Service.StateDirectory" not in hq and "Service.DeviceAllow" not in d
    assert hq["Service.PrivateDevices"] == "yes" and hq["Service.MemoryDenyWriteExecute"] == "yes"
    assert hq["Service.EnvironmentFile"] == "-/etc/edge/hq.env"
    for key in (
        "DynamicUser ProtectSystem ProtectHome PrivateTmp NoNewPrivileges DevicePolicy "
        "CapabilityBoundingSet UMask ProtectKernelTunables ProtectKernelModules "
        "ProtectControlGroups RestrictNamespaces LockPersonality SystemCallArchitectures "
        "RestrictAddressFamilies ProtectProc RestrictSUIDSGID"
    ).split():
        assert hq[f"Service.{key}"] == service[f"Service.{key}"], key
    active = [line for line in HQ_UNIT.read_text().splitlines() if not line.startswith("#")]
    assert not [line for line in active if "PASSWORD" in line.upper()]
