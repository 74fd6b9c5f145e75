"""How should one tick's frames go through CenterFace on a CPU? Prints steps/s per mode.

    .venv/bin/python tools/detect_modes.py [--seconds 1.5] [--rounds 4] [--cameras 2 4 8]

A step is one 1280x720 frame of the walking clip per camera. Three ways to detect them:
  one by one      each frame on its own, on a session using every core (ORT's default);
  one batched run all frames in one session run (a batch of N canvases);
  side by side    frames on a thread pool, one per core, each on a one-thread session
                  (what CenterFace.detect_many does on the CPU).
Rounds alternate the modes, so a change in the machine's load touches each alike; the
median and range over the rounds are printed (docs/benchmarks.md has the figures).
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edge.commands.bench import load_frames
from edge.pipeline import detect

ROOT = Path(__file__).resolve().parent.parent
CLIP = ROOT.parent / "shared" / "media" / "face-demographics-walking-and-pause.gif"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="per mode and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cameras", type=int, nargs="+", default=[2, 4, 8])
    args = parser.parse_args()

    detector = detect.CenterFace(ROOT / "models" / "centerface.onnx")
    frames = load_frames(str(CLIP), (1280, 720))
    size = detect.input_size(1280, 720, detector.settings.input_width)
    all_cores, one_core = detector._runner(size), detector._runner(size, threads=1)
    pool = ThreadPoolExecutor(detect.CPU_CORES)

    def one_by_one(step):
        return [detector._detect(all_cores, size, [f]) for f in step]

    def batched(step):
        return detector._detect(all_cores, size, step)

    def side_by_side(step):
        return list(pool.map(lambda f: detector._detect(one_core, size, [f]), step))

    modes = {"one by one": one_by_one, "one batched run": batched, "side by side": side_by_side}
    print(f"{detect.CPU_CORES} cores, canvas {size[0]}x{size[1]}, steps/s: median (range)")
    print("| cameras | " + " | ".join(modes) + " |")
    print("| --- |" + " --- |" * len(modes))
    for n in args.cameras:
        steps = [[frames[(i + k) % len(frames)] for k in range(n)] for i in range(len(frames))]
        rates: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(args.rounds):
            for name, fn in modes.items():
                fn(steps[0])  # warm-up
                done, start = 0, time.perf_counter()
                while time.perf_counter() - start < args.seconds:
                    fn(steps[done % len(steps)])
                    done += 1
                rates[name].append(done / (time.perf_counter() - start))
        cells = [f"{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})" for r in rates.values()]
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
