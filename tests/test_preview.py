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


def intermittent_folder(tmp_path, group_photo, with_faces: int, without: int):
    """A folder camera whose people come and go: `with_faces` frames of the group photo,
    then `without` frames of the same view with no face left in it (blurred)."""
    folder = tmp_path / "scene"
    folder.mkdir()
    photo = cv2.imread(str(group_photo))
    empty = cv2.GaussianBlur(photo, (0, 0), photo.shape[1] / 30)
    for i in range(with_faces + without):
        cv2.imwrite(str(folder / f"{i:02d}.jpg"), photo if i < with_faces else empty)
    return folder


def preview(tmp_path, source, seconds="2") -> tuple:
    out = tmp_path / "aim.jpg"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"models: {{dir: '{ROOT / 'models'}'}}\n"
        f"cameras:\n  - {{id: entrance, source: '{source}', fps: 6, loop: true}}\n"
    )
    result = run_edge(
        "--config", str(config), "preview", "--camera", "entrance", "--out", str(out),
        "--seconds", seconds,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out, result.stdout


@pytest.mark.slow
def test_preview_keeps_the_frame_with_the_most_faces(tmp_path, group_photo):
    """People in view a third of the time: the frame written is one with all six, not
    whichever frame came last (issue 23: 5 tries in 6 gave 0 faces)."""
    out, stdout = preview(tmp_path, intermittent_folder(tmp_path, group_photo, 2, 4))
    assert f"{out}: 6 faces, camera entrance" in stdout, stdout
    assert "the frame with the most faces of" in stdout
    image = cv2.imread(str(out))
    photo = cv2.imread(str(group_photo))
    # The written frame is the photo (boxes drawn on it), not the blurred empty view.
    sharp = cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()
    blurred = cv2.Laplacian(
        cv2.cvtColor(cv2.GaussianBlur(photo, (0, 0), photo.shape[1] / 30), cv2.COLOR_BGR2GRAY),
        cv2.CV_64F,
    ).var()
    assert sharp > 10 * blurred


@pytest.mark.slow
def test_preview_says_when_it_saw_no_face(tmp_path, group_photo):
    out, stdout = preview(tmp_path, intermittent_folder(tmp_path, group_photo, 0, 3), "1")
    assert f"{out}: no face seen in " in stdout and "the image is the last frame" in stdout
    assert "--seconds" in stdout
    assert out.exists()
