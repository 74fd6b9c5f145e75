"""`edge bench`: how fast is the pipeline on this machine, and what does batching buy?

Measurements on the same frames, in one run, with `--cameras N` copies of the
source fed side by side (each step hands every camera its next frame):
  full           the service's own loop (Service.tick): detect, track, classify
                 only the faces the audience stage asks for, in one batch;
  detector_only  the detector alone (detect_many over the N frames): the floor
                 the pipeline cannot beat;
  naive          detect, then classify every face of every frame one at a time;
  classifier     the age and gender networks alone on real face chips (cut once
                 from the faces in the source), at batch sizes 1, 8, 32, 128.
`--idle-share P` makes a share P of every camera's time an empty, still scene
(the source's first frame blurred until no face is left in it, with sensor noise
so no two frames are the same bytes), as a store camera sees most of the day;
each camera then starts at its own point of the sequence, as independent cameras
would, instead of all walking in at the same moment. The full pipeline runs with
the cameras' motion gating and tracked_detect_fps as configured (defaults: on);
`--no-gating` detects every frame, for comparison; `detected_share` says how many
of the frames the detector ran on. Frames are decoded and resized before timing
starts, so the figures are the pipeline's, not the video decoder's. frames/s are
per camera; latency is per step, from the moment the frames are handed over to
the moment the decisions are made; `cpu_ms` is the CPU time per step (user +
system, all threads), which other programs loading the machine barely change,
unlike frames/s. `--gpu` insists on CUDA (one line and exit status 69 where it cannot run)
and reports the GPU memory in use.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime

from edge import __version__
from edge.config import CameraConfig, Config
from edge.errors import EdgeError, InputError
from edge.inference import runtime
from edge.redact import redact
from edge.service import Service

CLASSIFIER_BATCHES = (1, 8, 32, 128)


class GpuUnavailable(EdgeError):
    """`--gpu` asked for and no usable GPU provider (EX_UNAVAILABLE)."""

    exit_status = 69


def load_frames(source: str, size: tuple[int, int] | None) -> list[np.ndarray]:
    cap = cv2.VideoCapture(source)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC) if size else frame)
    cap.release()
    if not frames:
        raise InputError(f"{redact(source)}: no frames could be read")
    return frames


def with_idle_share(frames: list[np.ndarray], idle_share: float, seed: int = 0) -> list[np.ndarray]:
    """The source followed by an empty, still scene for a share `idle_share` of the frames.

    The scene is the first frame blurred (sigma 1/30 of its width: no face survives)
    with a little sensor noise (SD 2 grey levels), eight noisy copies in turn.
    """
    if idle_share <= 0:
        return list(frames)
    still = with_noise(empty_view(frames[0]), 8, seed)
    idle = round(len(frames) * idle_share / (1 - idle_share))
    return list(frames) + [still[i % len(still)] for i in range(idle)]


def empty_view(frame: np.ndarray) -> np.ndarray:
    """The frame blurred (sigma 1/30 of its width) until no face is left in it."""
    return cv2.GaussianBlur(frame, (0, 0), frame.shape[1] / 30)


def with_noise(image: np.ndarray, copies: int, seed: int = 0) -> list[np.ndarray]:
    """`copies` of the image with a little sensor noise (SD 2 grey levels), so no two
    frames are the same bytes, as from a real camera."""
    rng = np.random.default_rng(seed)
    base = image.astype(np.float32)
    return [
        np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8) for _ in range(copies)
    ]


class MemorySource:
    """Pre-decoded frames as a looping camera for CameraReader, from frame `start` on."""

    def __init__(self, frames: list[np.ndarray], fps: float, start: int = 0):
        self.frames, self.fps, self._i = frames, fps, start

    def read(self) -> np.ndarray:
        frame = self.frames[self._i % len(self.frames)]
        self._i += 1
        return frame

    def release(self) -> None:
        pass


def cpu_s() -> float:
    """CPU time this process has used, all threads: user + system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn, inputs: list, seconds: float) -> dict:
    """Call fn(input) over the inputs (looping) for `seconds`; calls/s and latency."""
    latencies, i = [], 0
    fn(inputs[0])  # warm-up: first-run allocations are not the steady state
    start, cpu_start = time.perf_counter(), cpu_s()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn(inputs[i % len(inputs)])
        latencies.append((time.perf_counter() - t0) * 1000)
        i += 1
    result = summary(latencies, time.perf_counter() - start)
    result["cpu_ms"] = round((cpu_s() - cpu_start) * 1000 / max(i, 1), 2)
    return result


def side_by_side(frames: list[np.ndarray], cameras: int) -> list[list[np.ndarray]]:
    """Each step's frames: the same frame from each of `cameras` copies of the source."""
    return [[frame] * cameras for frame in frames]


def percentiles(latencies_ms: list[float]) -> dict:
    """p50, p95, p99 and the maximum: a display waits for the slowest tick, and a stall
    of seconds in one tick in a thousand shows only in the last two."""
    lat = np.array(latencies_ms)
    return {
        **{f"p{q}_ms": round(float(np.percentile(lat, q)), 2) for q in (50, 95, 99)},
        "max_ms": round(float(lat.max()), 2),
    }


def summary(latencies_ms: list[float], elapsed_s: float) -> dict:
    return {
        "fps": round(len(latencies_ms) / elapsed_s, 2),
        "frames": len(latencies_ms),
        **percentiles(latencies_ms),
    }


def memory_service(
    config,
    frames: list[np.ndarray],
    fps: float,
    cameras: int,
    gating: bool = True,
    stagger: bool = False,
) -> Service:
    """The service with `cameras` cameras, each looping over the same decoded frames
    (with `stagger`, camera i starts i/cameras of the way into them)."""
    ungated: dict[str, Any] = {} if gating else {"motion": False, "tracked_detect_fps": None}
    config = dataclasses.replace(
        config,
        cameras=[
            CameraConfig(
                id=f"bench{i}" if cameras > 1 else "bench",
                source="memory",
                fps=fps,
                loop=True,
                **ungated,
            )
            for i in range(cameras)
        ],
    )
    starts = iter(range(cameras))  # the service opens its cameras in order

    def opener(*_):
        i = next(starts, 0)
        return MemorySource(frames, fps, start=len(frames) * i // cameras if stagger else 0)

    return Service(config, sinks=[], offline=True, opener=opener)


def bench_full(service: Service, seconds: float) -> dict:
    for cam in service.cameras.values():
        cam.reader.start()
    try:
        service.tick()  # warm-up
        done_before = {cid: cam.frames for cid, cam in service.cameras.items()}
        detected_before = {cid: cam.frames_detected for cid, cam in service.cameras.items()}
        latencies, start, cpu_start = [], time.perf_counter(), cpu_s()
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            if service.tick():
                latencies.append((time.perf_counter() - t0) * 1000)
        elapsed, cpu_used = time.perf_counter() - start, cpu_s() - cpu_start
    finally:
        for cam in service.cameras.values():
            cam.reader.stop()
    result = summary(latencies, elapsed)
    result["cpu_ms"] = round(cpu_used * 1000 / max(len(latencies), 1), 2)
    per_camera = {
        cid: round((cam.frames - done_before[cid]) / elapsed, 2)
        for cid, cam in service.cameras.items()
    }
    result["fps"] = round(float(np.mean(list(per_camera.values()))), 2)
    result["per_camera_fps"] = per_camera
    frames = sum(cam.frames - done_before[cid] for cid, cam in service.cameras.items())
    detected = sum(
        cam.frames_detected - detected_before[cid] for cid, cam in service.cameras.items()
    )
    result["detected_share"] = round(detected / frames, 3) if frames else None
    result["classifier_calls"] = service.classifier_calls
    result["mean_batch"] = service.stats().classifier_batch or 0
    return result


def take_rows(chips, index: np.ndarray):
    """The same rows of every chip array in a (possibly nested) tuple of them."""
    return tuple(take_rows(c, index) for c in chips) if isinstance(chips, tuple) else chips[index]


def bench_classifier(classifier, detector, frames: list[np.ndarray], seconds: float) -> dict:
    """Faces/s of the networks alone at each batch size, on chips of the source's faces."""
    if not hasattr(classifier, "classify_chips"):
        return {}  # the insightface backend crops inside its own call
    sample = frames[:: max(1, len(frames) // 32)]  # faces from across the clip, cut once
    faces = [detector(frame) for frame in sample]
    if not any(len(f) for f in faces):
        return {}
    cut = classifier.chips(sample, faces)  # one array per network, or per ensemble member
    index = np.arange(max(CLASSIFIER_BATCHES)) % sum(len(f) for f in faces)
    results = {}
    for batch in CLASSIFIER_BATCHES:
        chips = take_rows(cut, index[:batch])
        r = timed(
            lambda c: classifier.classify_chips(*c), [chips], seconds / len(CLASSIFIER_BATCHES)
        )
        results[str(batch)] = {
            "faces_per_s": round(r["fps"] * batch, 1),
            "p50_ms": r["p50_ms"],
            "p95_ms": r["p95_ms"],
        }
    return results


def nvidia_smi(query: str) -> str | None:
    """The first GPU's answer to `nvidia-smi --query-gpu=QUERY`; None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.strip().splitlines()
    return lines[0].strip() if lines else None


def gpu_memory_used_mib() -> int | None:
    """Memory in use on the first GPU, every process's (ours holds its arena to the end)."""
    used = nvidia_smi("memory.used")
    return int(used) if used and used.isdigit() else None


def require_gpu(config: Config) -> Config:
    """The config with CUDA as the provider (after tensorrt when configured), or fail
    in one line."""
    reason = runtime.unusable("cuda")
    if reason:
        raise GpuUnavailable(f"bench --gpu: CUDA cannot run here: {reason}")
    gpu_first = [p for p in config.runtime.providers if p == "tensorrt"]
    return dataclasses.replace(
        config, runtime=dataclasses.replace(config.runtime, providers=gpu_first + ["cuda", "cpu"])
    )


def run(
    config,
    source: str,
    size: tuple[int, int] | None,
    seconds: float,
    cameras: int = 1,
    gpu: bool = False,
    idle_share: float = 0.0,
    gating: bool = True,
) -> dict:
    if gpu:
        config = require_gpu(config)
    clip = load_frames(source, size)
    frames = with_idle_share(clip, idle_share)
    fps = cv2.VideoCapture(source).get(cv2.CAP_PROP_FPS) or 15.0
    service = memory_service(config, frames, fps, cameras, gating, stagger=idle_share > 0)
    detector, classifier = service.analyzer.detector, service.analyzer.classifier
    providers = {"detector": detector.provider, "classifier": classifier.provider}
    if gpu and not set(providers.values()) <= {"cuda", "tensorrt"}:
        raise GpuUnavailable(
            f"bench --gpu: detector on {providers['detector']}, classifier "
            f"on {providers['classifier']}: onnxruntime did not take the GPU "
            f"(its messages above say why)"
        )
    full = bench_full(service, seconds)
    steps = side_by_side(frames, cameras)
    detector_only = timed(detector.detect_many, steps, seconds)

    def naive(batch):
        for frame in batch:
            faces = detector(frame)
            for i in range(len(faces)):
                classifier(frame, faces[i])

    naive_result = timed(naive, steps, seconds)
    faces_per_frame = float(np.mean([len(detector(f)) for f in clip]))  # people present
    # Before the batch-128 classifier measure, which needs memory the service never does.
    pipeline_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    classifier_alone = bench_classifier(classifier, detector, frames, seconds)
    return {
        "full": full,
        "detector_only": detector_only,
        "naive": naive_result,
        "classifier": classifier_alone,
        "ratios": {
            "full_over_naive": round(full["fps"] / naive_result["fps"], 2),
            "full_over_detector_only": round(full["fps"] / detector_only["fps"], 2),
        },
        "peak_rss_mb": pipeline_rss_mb,  # the pipeline measures
        "peak_rss_with_classifier_alone_mb": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        ),
        "gpu_memory_used_mib": gpu_memory_used_mib(),
        "settings": {
            "source": redact(source),
            "frames": len(frames),
            "idle_share": idle_share,
            "gating": gating,
            "frame_size": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
            "cameras": cameras,
            "detector": config.detector.backend,
            "detector_input_width": config.detector.input_width,
            "classifier": config.classifier.backend,
            "flip_tta": config.classifier.flip_tta,
            "faces_per_frame": round(faces_per_frame, 2),
            "seconds_per_measure": seconds,
            "provider": detector.provider,
            "providers": providers,
            "gpu": gpu,
            "batch_buckets": list(config.runtime.batch_buckets),
        },
        "machine": machine(),
    }


# -- a crowd walking in ---------------------------------------------------------------


def face_crops(photo: np.ndarray, faces, margin: float = 1.8) -> list[np.ndarray]:
    """Square crops of the photo around each detected face, `margin` times the face's
    size, so the detector finds a whole head in each."""
    crops = []
    height, width = photo.shape[:2]
    for x1, y1, x2, y2 in np.asarray(faces.boxes, float):
        half = max(x2 - x1, y2 - y1) * margin / 2
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        left, top = max(0, int(cx - half)), max(0, int(cy - half))
        right, bottom = min(width, int(cx + half)), min(height, int(cy + half))
        crops.append(photo[top:bottom, left:right].copy())
    return crops


def crowd_scene(
    photo: np.ndarray, crops: list[np.ndarray], n: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(empty, crowd): the photo's view at `size` with nobody in it, and the same view
    with `n` faces side by side in a grid (the crops in turn, every other round
    mirrored, so neighbours differ)."""
    width, height = size
    cols = math.ceil(math.sqrt(n * width / height))
    rows = math.ceil(n / cols)
    cell_w, cell_h = width // cols, height // rows
    side = int(min(cell_w, cell_h) * 0.95)
    empty = empty_view(cv2.resize(photo, size, interpolation=cv2.INTER_AREA))
    crowd = empty.copy()
    for k in range(n):
        crop = cv2.resize(crops[k % len(crops)], (side, side), interpolation=cv2.INTER_AREA)
        if (k // len(crops)) % 2:
            crop = crop[:, ::-1]
        row, col = divmod(k, cols)
        x, y = col * cell_w + (cell_w - side) // 2, row * cell_h + (cell_h - side) // 2
        crowd[y : y + side, x : x + side] = crop
    return empty, crowd


def bench_crowd(
    config, n: int, size: tuple[int, int], seconds: float, fps: float = 15.0, lead_s: float = 1.0
) -> dict:
    """`n` people walking in at once: an empty view for `lead_s`, then `n` faces (from
    the group photo) in every frame, fed to the service's loop as fast as it takes them.
    Per tick from their arrival on: latency and how many faces were classified; and
    the time until every face found had its first classification."""
    from edge.pipeline import images
    from edge.samples import group_photo

    frames: list[np.ndarray] = []  # filled below, before the camera starts reading
    service = memory_service(config, frames, fps, cameras=1)
    analyzer = service.analyzer
    photo = images.read_image(group_photo())
    faces = analyzer.detector(photo)
    empty, crowd = crowd_scene(photo, face_crops(photo, faces), n, size)
    lead = round(lead_s * fps)
    quiet, busy = with_noise(empty, 8), with_noise(crowd, 8, seed=1)
    frames += [quiet[i % 8] for i in range(lead)]
    frames += [busy[i % 8] for i in range(round(fps * max(seconds, 3.0)))]
    analyzer.classifier.classify_many([photo], [faces])  # first-run allocations, not timed
    cam = next(iter(service.cameras.values()))
    # Per tick that saw the crowd: (start, end, people classified, people found, samples).
    arrived: list[tuple[float, float, int, int, int]] = []
    cam.reader.start()
    try:
        while cam.frames < len(frames):
            started = time.perf_counter()
            if not service.tick() or cam.frames <= lead:
                continue
            people = cam.audience.people.values()
            arrived.append(
                (
                    started,
                    time.perf_counter(),
                    sum(p.samples > 0 for p in people),
                    len(people),
                    sum(p.samples for p in people),
                )
            )
            if arrived[-1][1] - arrived[0][0] > seconds:
                break
    finally:
        cam.reader.stop()
    if not arrived:
        raise EdgeError("bench --crowd: the loop never reached the crowd; give --seconds more")
    entered = arrived[0][0]
    found = max(t[3] for t in arrived)
    done = next((end for _, end, classified, *_ in arrived if classified >= found > 0), None)
    samples = [arrived[0][4]] + [b[4] - a[4] for a, b in zip(arrived, arrived[1:], strict=False)]
    return {
        "crowd": {
            "faces": n,
            "found": found,
            "classified": arrived[-1][2],
            "all_classified_s": None if done is None else round(done - entered, 3),
            "ticks": len(arrived),
            **percentiles([(end - start) * 1000 for start, end, *_ in arrived]),
            "max_classified_in_a_tick": max(samples),
            "max_faces_per_tick": config.classifier.max_faces_per_tick,
            "seconds": round(arrived[-1][1] - entered, 2),
        },
        "settings": {
            "frame_size": f"{size[0]}x{size[1]}",
            "fps": fps,
            "face_px": round(crowd_face_px(n, size)),
            "detector": config.detector.backend,
            "detector_input_width": config.detector.input_width,
            "classifier": config.classifier.backend,
            "flip_tta": config.classifier.flip_tta,
            "providers": {
                "detector": analyzer.detector.provider,
                "classifier": analyzer.classifier.provider,
            },
        },
        "machine": machine(),
    }


def crowd_face_px(n: int, size: tuple[int, int]) -> float:
    """About how wide each face is in the crowd scene (its crop is 1.8 faces wide)."""
    width, height = size
    cols = math.ceil(math.sqrt(n * width / height))
    rows = math.ceil(n / cols)
    return min(width // cols, height // rows) * 0.95 / 1.8


def crowd_table(result: dict) -> str:
    c, s, m = result["crowd"], result["settings"], result["machine"]
    done = (
        f"every face found classified {c['all_classified_s']:.2f} s after they came in"
        if c["all_classified_s"] is not None
        else f"not every face classified in {c['seconds']:.1f} s ({c['classified']} of "
        f"{c['found']}): give --seconds more"
    )
    budget = c["max_faces_per_tick"] or "no limit"
    return "\n".join(
        [
            f"crowd: {c['faces']} faces came in at once at {s['frame_size']} (about "
            f"{s['face_px']} px wide), {c['found']} found and tracked",
            f"tick latency from their arrival, {c['ticks']} ticks: p50 {c['p50_ms']:.1f} ms, "
            f"p95 {c['p95_ms']:.1f} ms, p99 {c['p99_ms']:.1f} ms, max {c['max_ms']:.1f} ms",
            f"{done}; at most {c['max_classified_in_a_tick']} faces classified in one tick "
            f"(classifier.max_faces_per_tick: {budget})",
            f"detector {s['detector']} at {s['detector_input_width']} px on "
            f"{s['providers']['detector']}, classifier {s['classifier']} on "
            f"{s['providers']['classifier']}; {m['cores']} cores ({m['cpu']})"
            + (f", {m['gpu']}" if m["gpu"] else ""),
        ]
    )


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "gpu": nvidia_smi("name,driver_version"),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "opencv": cv2.__version__,
        "edge": __version__,
        "platform": platform.platform(),
    }


def table(result: dict) -> str:
    rows = [
        f"{'measure':15s} {'frames/s':>9s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} "
        f"{'max ms':>8s} {'CPU ms':>8s}"
    ]
    for key in ("full", "detector_only", "naive"):
        r = result[key]
        rows.append(
            f"{key:15s} {r['fps']:9.1f} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} "
            f"{r['p99_ms']:8.1f} {r['max_ms']:8.1f} {r['cpu_ms']:8.1f}"
        )
    ratios = result["ratios"]
    rows.append(
        "(latency and CPU time per step: one frame from every camera; CPU time counts "
        "every core, so unlike frames/s it barely moves when other programs load the "
        "machine)"
    )
    rows.append(
        f"full / naive = {ratios['full_over_naive']:.2f}   "
        f"full / detector only = {ratios['full_over_detector_only']:.2f}   "
        f"peak RSS {result['peak_rss_mb']:.0f} MB "
        f"({result['peak_rss_with_classifier_alone_mb']:.0f} MB after the batch-128 "
        f"classifier measure)"
    )
    s = result["settings"]
    rows.append(
        f"detector ran on {result['full']['detected_share']:.0%} of the full pipeline's "
        f"frames (gating {'on' if s['gating'] else 'off'}"
        + (f", nobody present {s['idle_share']:.0%} of the time)" if s["idle_share"] else ")")
    )
    if s["cameras"] > 1:
        rows.append(
            f"{s['cameras']} cameras, frames/s each: "
            + ", ".join(f"{fps:.1f}" for fps in result["full"]["per_camera_fps"].values())
        )
    if result["classifier"]:
        rows.append(
            "classifier alone, faces/s: "
            + ", ".join(
                f"batch {b} {r['faces_per_s']:.0f}" for b, r in result["classifier"].items()
            )
        )
    memory = result["gpu_memory_used_mib"]
    rows.append(
        f"{s['frame_size']} frames, detection at {s['detector_input_width']} px wide, "
        f"{s['faces_per_frame']} faces/frame, detector on {s['providers']['detector']}, "
        f"classifier on {s['providers']['classifier']}"
        + (f", GPU memory used {memory} MiB" if memory is not None else "")
    )
    m = result["machine"]
    rows.append(f"{m['cores']} cores ({m['cpu']})" + (f", {m['gpu']}" if m["gpu"] else ""))
    return "\n".join(rows)


# main's options, each the `dest` of `edge bench`'s option of that meaning (cli.py)
OPTIONS = (
    "source",
    "size",
    "seconds",
    "json_path",
    "cameras",
    "gpu",
    "idle_share",
    "gating",
    "crowd",
)


def main(
    config,
    *,
    source: str | None,
    size: str | None,
    seconds: float,
    json_path: str | None,
    cameras: int = 1,
    gpu: bool = False,
    idle_share: float = 0.0,
    gating: bool = True,
    crowd: int | None = None,
) -> int:
    wh = None
    if size:
        try:
            w, h = (int(v) for v in size.lower().split("x"))
            wh = (w, h)
        except ValueError:
            raise InputError(f"--size {size!r}: expected WIDTHxHEIGHT, e.g. 1280x720") from None
    if cameras < 1:
        raise InputError(f"--cameras {cameras}: expected 1 or more")
    if not 0 <= idle_share < 1:
        raise InputError(f"--idle-share {idle_share}: expected a share from 0 to below 1, e.g. 0.7")
    if crowd is not None:
        if crowd < 1:
            raise InputError(f"--crowd {crowd}: expected 1 or more faces, e.g. 40")
        if gpu:
            config = require_gpu(config)
        result = bench_crowd(config, crowd, wh or (1280, 720), seconds)
        print(crowd_table(result))
    else:
        if not source:
            raise InputError("bench: give --source FILE (or --crowd N for a crowd walking in)")
        result = run(config, source, wh, seconds, cameras, gpu, idle_share, gating)
        print(table(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0
