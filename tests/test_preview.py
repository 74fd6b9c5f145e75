"""`edge preview` as an installer runs it to aim a camera: one annotated JPEG, private."""

import stat

import cv2
import numpy as np
import pytest

from edge.errors import EX_CONFIG

from conftest import ROOT, run_edge


def write_config(tmp_path, source):
    path = tmp_path / "config.yaml"
    path.write_text(f"""
models: {{dir: "{ROOT / "models"}"}}
cameras:
  - {{id: entrance, name: Entrance, source: "{source}"}}
  - {{id: aisle, source: /dev/video9}}
""")
    return path


@pytest.mark.slow
def test_preview_of_the_group_photo(tmp_path, group_photo):
    out = tmp_path / "aim.jpg"
    out.write_bytes(b"an older preview")
    out.chmod(0o644)  # replaced, and no longer readable by others
    config = write_config(tmp_path, group_photo)
    result = run_edge("--config", str(config), "preview", "--camera", "entrance", "--out", str(out))
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    image = cv2.imread(str(out))
    source = cv2.imread(str(group_photo))
    assert image is not None and image.shape == source.shape
    # JPEG noise is a few levels; boxes and labels change pixels completely.
    changed = np.abs(image.astype(int) - source.astype(int)).max(axis=2) > 80
    assert changed.mean() > 0.01
    assert f"{out}: 6 faces, camera entrance" in result.stdout
    assert "delete it" in result.stdout


@pytest.mark.slow
def test_unknown_camera_names_the_known_ones(tmp_path, group_photo):
    out = tmp_path / "aim.jpg"
    result = run_edge(
        "--config",
        str(write_config(tmp_path, group_photo)),
        "preview",
        "--camera",
        "door",
        "--out",
        str(out),
    )
    assert result.returncode == EX_CONFIG
    assert "no camera 'door'; configured cameras: entrance, aisle" in result.stderr
    assert not out.exists()
