"""Robustness checks on footage we do not have: the shared clips and faces, degraded.

Held-out cameras differ from the shared clips in resolution, frame rate, light,
noise and occlusion. This tool makes those variants from ../shared (into a
scratch folder, never the repository) and measures the pipeline on them:

  .venv/bin/python tools/robustness.py clips /tmp/robust-clips
      each clip variant through `edge run --jsonl` (offline: every frame), its
      visitor counts beside the ground truth of ../shared/media/README.md

  .venv/bin/python tools/robustness.py faces /tmp/robust-faces
      the UTKFace dev crops shrunk to a store camera's face size (80 px), then
      also darkened, noisy or JPEG-compressed, each through `edge eval`

Nothing is fitted here; docs/calibration.md and README quote its figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
EDGE = [sys.executable, "-m", "edge"]

# ../shared/media/README.md: who is in each clip.
CLIPS = {
    "walk": (
        "face-demographics-walking-and-pause.gif",
        {("adult", "female"): 2, ("adult", "male"): 1},
    ),
    "pose": (
        "head-pose-face-detection-female-and-male.gif",
        {("adult", "female"): 1, ("adult", "male"): 1},
    ),
}
FACE_PX = 80


def read_clip(path: Path) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 12.5
    frames = []
    while (got := cap.read())[0]:
        frames.append(got[1])
    cap.release()
    return frames, fps


def write_clip(path: Path, frames: list[np.ndarray], fps: float) -> None:
    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for frame in frames:
        out.write(frame)
    out.release()


def hide_left_third(frames: list[np.ndarray], seconds: float, fps: float) -> list[np.ndarray]:
    """A grey panel over the left third for `seconds` in the middle (someone passing)."""
    k = int(seconds * fps)
    start = len(frames) // 2 - k // 2
    out = []
    for i, frame in enumerate(frames):
        if start <= i < start + k:
            frame = frame.copy()
            frame[:, : frame.shape[1] // 3] = 128
        out.append(frame)
    return out


def clip_variants(frames: list[np.ndarray], fps: float) -> dict:
    """name -> (frames, fps). `slow` shows each frame three times: longer visits."""
    rng = np.random.default_rng(0)
    slow = [f for f in frames for _ in range(3)]
    return {
        "original": (frames, fps),
        "1280x720": (
            [cv2.resize(f, (1280, 720), interpolation=cv2.INTER_CUBIC) for f in frames],
            fps,
        ),
        "1920x1080": (
            [cv2.resize(f, (1920, 1080), interpolation=cv2.INTER_CUBIC) for f in frames],
            fps,
        ),
        "half-fps": (frames[::2], fps / 2),
        "third-fps": (frames[::3], fps / 3),
        "mirrored": ([cv2.flip(f, 1) for f in frames], fps),
        "dark-x0.45": ([(f * 0.45).astype(np.uint8) for f in frames], fps),
        "noise-sd12": (
            [np.clip(f + rng.normal(0, 12, f.shape), 0, 255).astype(np.uint8) for f in frames],
            fps,
        ),
        "slow-x3": (slow, fps),
        "hidden-0.6s": (hide_left_third(frames, 0.64, fps), fps),
        "slow-hidden-1.5s": (hide_left_third(slow, 1.5, fps), fps),
        "slow-hidden-2.5s": (hide_left_third(slow, 2.5, fps), fps),
        "slow-blank-2s": (
            slow[: len(slow) // 2]
            + [np.full_like(frames[0], 100)] * int(2 * fps)
            + slow[len(slow) // 2 :],
            fps,
        ),
    }


def visitors(config: Path, source: Path) -> dict:
    """Counts from the summary event of `edge run --jsonl` on one file."""
    run = subprocess.run(
        [*EDGE, "--config", str(config), "run", "--source", str(source), "--jsonl"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    summary = [e for e in events if e["type"] == "summary"][-1]
    counts = {
        (c, g): n for c, by_g in summary["unique_visitors"].items() for g, n in by_g.items() if n
    }
    return {"counts": counts, "unclassified": summary["unclassified"]}


def cmd_clips(out: Path, config: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    exact = total = 0
    print(f"{'clip':5} {'variant':17} {'visitors (class gender: n)':44} {'unclassified':>12}  ok")
    for short, (name, truth) in CLIPS.items():
        frames, fps = read_clip(SHARED / "media" / name)
        for variant, (v_frames, v_fps) in clip_variants(frames, fps).items():
            path = out / f"{short}-{variant}.avi"
            write_clip(path, v_frames, v_fps)
            got = visitors(config, path)
            ok = got["counts"] == truth and got["unclassified"] == 0
            exact += ok
            total += 1
            line = ", ".join(f"{c} {g}: {n}" for (c, g), n in sorted(got["counts"].items()))
            print(
                f"{short:5} {variant:17} {line:44} {got['unclassified']:>12}  "
                f"{'yes' if ok else 'NO'}",
                flush=True,
            )
    print(f"exact counts: {exact} of {total} variants")
    return 0


FACE_VARIANTS = {
    "small": lambda im, rng: im,
    "small-dark-x0.45": lambda im, rng: (im * 0.45).astype(np.uint8),
    "small-noise-sd12": lambda im, rng: np.clip(im + rng.normal(0, 12, im.shape), 0, 255).astype(
        np.uint8
    ),
    "small-jpeg-q25": lambda im, rng: cv2.imdecode(
        cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 25])[1], cv2.IMREAD_COLOR
    ),
}


def cmd_faces(out: Path, config: Path, labels: Path) -> int:
    rows = list(csv.DictReader(labels.open()))
    keys = ("n", "misses", "gender_accuracy_13plus", "age_class_accuracy", "age_mae")
    print(f"{'variant':18} " + " ".join(f"{k:>22}" for k in keys))
    for variant, degrade in FACE_VARIANTS.items():
        rng = np.random.default_rng(1)
        folder = out / variant
        (folder / "images").mkdir(parents=True, exist_ok=True)
        with (folder / "labels.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "age", "gender"])
            for row in rows:
                image = cv2.imread(str(labels.parent / row["file"]))
                small = cv2.resize(image, (FACE_PX, FACE_PX), interpolation=cv2.INTER_AREA)
                name = f"images/{Path(row['file']).name}.png"
                cv2.imwrite(str(folder / name), degrade(small, rng))
                writer.writerow([name, row["age"], row["gender"]])
        result_file = folder / "results.json"
        subprocess.run(
            [
                *EDGE,
                "--config",
                str(config),
                "eval",
                str(folder / "labels.csv"),
                "--out",
                str(result_file),
            ],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        result = json.loads(result_file.read_text())
        print(f"{variant:18} " + " ".join(f"{result[k]:>22}" for k in keys), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("clips", "faces"))
    parser.add_argument("out", type=Path, help="scratch folder for the variants")
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    parser.add_argument(
        "--labels", type=Path, default=SHARED / "faces" / "utkface-dev" / "labels.csv"
    )
    args = parser.parse_args()
    if args.what == "clips":
        return cmd_clips(args.out, args.config.resolve())
    return cmd_faces(args.out, args.config.resolve(), args.labels)


if __name__ == "__main__":
    sys.exit(main())
