"""A crowd walking in (issue 23): classification of new faces is spread over ticks
within classifier.max_faces_per_tick, new and bigger faces first, and everyone is
still classified. No timing is judged here: `edge bench --crowd N` prints the figures
(docs/benchmarks.md)."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest

from edge.config import Config
from edge.pipeline.audience import Audience
from edge.pipeline.track import Track
from edge.service import Service

from conftest import ROOT, run_edge


def face(track_id: int, width: float) -> Track:
    """A confirmed, frontal face `width` px wide, matched in this frame."""
    x, y = 100.0 * track_id, 50.0
    box = np.array([x, y, x + width, y + width * 1.2], np.float32)
    w = width
    landmarks = np.array(
        [
            [x + 0.3 * w, y + 0.4 * w],
            [x + 0.7 * w, y + 0.4 * w],
            [x + 0.5 * w, y + 0.65 * w],
            [x + 0.35 * w, y + 0.85 * w],
            [x + 0.65 * w, y + 0.85 * w],
        ],
        np.float32,
    )
    return Track(track_id, box, 0.9, landmarks, 0.0, 1.0, 3, 0, "confirmed", track_id)


def budgeted(limit: int, batch: list, audiences: dict[str, Audience]) -> list:
    """Service._within_budget of `batch` with max_faces_per_tick `limit`."""
    config = Config()
    config = dataclasses.replace(
        config, classifier=dataclasses.replace(config.classifier, max_faces_per_tick=limit)
    )
    cameras = {cid: SimpleNamespace(audience=audience) for cid, audience in audiences.items()}
    return Service._within_budget(SimpleNamespace(config=config, cameras=cameras), batch)


def test_a_tick_takes_new_faces_first_biggest_first_across_cameras():
    audiences = {"door": Audience("door"), "till": Audience("till")}
    till = audiences["till"]
    door_faces = [face(1, 40), face(2, 90), face(3, 120)]
    till_faces = [face(4, 60), face(5, 200)]
    # Track 5 was classified before (due again): it waits behind every new face,
    # however big it is.
    till._person(till_faces[1]).add_sample(np.array([0.1, 0.8, 0.1]), 0.9, 50.0, 0.0)
    batch = [("door", None, door_faces, [0, 1, 2]), ("till", None, till_faces, [0, 1])]
    kept = budgeted(3, batch, audiences)
    assert [wanted for *_, wanted in kept] == [[1, 2], [0]]  # widths 120, 90, 60
    assert sum(len(w) for *_, w in budgeted(4, batch, audiences)) == 4
    assert [w for *_, w in budgeted(4, batch, audiences)][1] == [0]  # the new 60 px before track 5
    assert budgeted(0, batch, audiences) == batch  # 0: no limit
    assert budgeted(5, batch, audiences) == batch


@pytest.mark.slow
def test_a_crowd_is_classified_over_ticks_within_the_budget(tmp_path):
    """`edge bench --crowd 12` with at most 4 faces a tick: no tick classifies more than
    4, and every face found is classified before the run ends."""
    config = tmp_path / "config.yaml"
    config.write_text(f"models:\n  dir: {ROOT / 'models'}\nclassifier: {{max_faces_per_tick: 4}}\n")
    out = tmp_path / "crowd.json"
    result = run_edge(
        "--config", str(config), "bench", "--crowd", "12", "--seconds", "15",
        "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    crowd = json.loads(out.read_text())["crowd"]
    assert crowd["found"] >= 10, crowd  # the crops are whole, frontal faces
    assert crowd["max_classified_in_a_tick"] <= 4, crowd
    assert crowd["classified"] == crowd["found"] and crowd["all_classified_s"] is not None
    assert crowd["ticks"] >= 3  # 12 faces at 4 a tick
    for words in ("crowd: 12 faces came in at once at 1280x720", "p99", "max", "classified"):
        assert words in result.stdout, result.stdout
