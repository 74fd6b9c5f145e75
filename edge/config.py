"""Typed configuration: one dataclass per section, unknown keys rejected.

Every key, its default and its meaning is documented here once (the `doc`
metadata), and README's configuration reference is generated from it with
`edge config --reference`. Loading checks types, choices and ranges and raises
ConfigError naming the file and the dotted key, so `edge run` can exit 78.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edge.errors import ConfigError

PROVIDERS = ("tensorrt", "cuda", "cpu")
# Without a config file, relative paths (models/) resolve against the checkout.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def opt(default: Any, doc: str, *, choices: tuple | None = None,
        min: float | None = None, max: float | None = None) -> Any:
    """A config field with its documentation and validation rules."""
    meta = {"doc": doc, "choices": choices, "min": min, "max": max}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, doc: str) -> Any:
    return field(default_factory=cls, metadata={"doc": doc, "section": True})


@dataclass
class ModelsConfig:
    dir: str = opt("models", "Folder holding the model files and manifest.yaml; relative paths "
                   "are resolved against the config file's folder.")


@dataclass
class DetectorConfig:
    backend: str = opt("centerface", "Face detector: centerface (default, MIT, fetched by "
                       "`edge models fetch`), scrfd (InsightFace model file you provide) or "
                       "yunet (OpenCV Zoo model file you provide).",
                       choices=("centerface", "scrfd", "yunet"))
    model: str | None = opt(None, "Model file for the scrfd or yunet backends.")
    input_width: int = opt(640, "Width in pixels the frame is scaled to for detection "
                           "(rounded up to a multiple of 32); height follows the aspect ratio. "
                           "Narrower frames are not upscaled.",
                           min=64, max=4096)
    score_threshold: float = opt(0.5, "Minimum detector confidence for a face.", min=0.0, max=1.0)
    nms_iou: float = opt(0.3, "Overlap (IoU) above which the weaker of two boxes is dropped.",
                         min=0.0, max=1.0)
    min_face_px: int = opt(20, "Faces narrower than this, in frame pixels, are ignored: too "
                           "small to classify reliably.", min=1, max=4096)


@dataclass
class ClassifierConfig:
    backend: str = opt("ensemble", "Age/gender model: cydral (CC0, dlib-models age and gender "
                       "networks, trained on the publisher's own data), faceapi (face-api.js's "
                       "AgeGenderNet, MIT weights trained partly on research-only datasets), "
                       "ensemble (the mean of classifier.members) or insightface (a "
                       "genderage.onnx you provide; the InsightFace packs are licensed for "
                       "non-commercial use only). Default: the ensemble of faceapi and cydral. "
                       "README \"Models\" lists each one's training data.", choices=("cydral", "faceapi", "ensemble", "insightface"))
    members: list = opt(["faceapi", "cydral"], "Backends averaged by backend: ensemble (any of "
                        "cydral, faceapi, insightface; each once).")
    weights: list | None = opt(None, "Ensemble weights for age and age class, one per member. "
                               "Default: those calibrated for the members (faceapi 0.7, "
                               "cydral 0.3; docs/calibration.md), equal for other member "
                               "sets.")
    gender_weights: list | None = opt(None, "Ensemble weights for P(male) (pooled on the "
                                      "log-odds scale), one per member. Default: faceapi "
                                      "0.55, cydral 0.45; equal for other member sets.")
    model: str | None = opt(None, "Model file for the insightface backend (genderage.onnx).")
    child_below: float = opt(18, "Age classes as reported: child is younger than this.",
                             min=1, max=100)
    old_from: float = opt(60, "Age classes as reported: old is this age or older.",
                          min=1, max=100)
    flip_tta: bool = opt(True, "Also classify the mirrored face chip and average: costs a "
                         "second image per face in the same batch, steadies predictions.")
    calibrated: bool = opt(True, "Apply the age calibration documented in docs/calibration.md "
                           "(corrects the model's under-estimation of older faces). Off gives "
                           "the raw model output.")
    exposure_floor: float = opt(90, "Faces darker than this (mean luma of the face centre, "
                                "0-255) are brightened up to it before the networks see "
                                "them: backlit entrances, dim aisles. 90 is the 5th "
                                "percentile of the well-exposed development faces "
                                "(docs/calibration.md); 0 turns it off.", min=0, max=255)


@dataclass
class RuntimeConfig:
    providers: list = opt(["cuda", "cpu"], "ONNX Runtime execution providers in order of "
                          "preference (tensorrt, cuda, cpu). GPU providers are skipped, with "
                          "one log line, where no GPU (or no CUDA library they need) is "
                          "present.")
    threads: int = opt(0, "CPU threads per inference session; 0 lets ONNX Runtime decide.",
                       min=0, max=256)
    batch_buckets: list = opt([1, 4, 16, 64, 128], "Batch sizes fed to a GPU provider: a "
                              "batch (classifier chips, detector frames of one size) is padded "
                              "up to the next, larger ones split at the largest, so CUDA and "
                              "TensorRT plan a few shapes once instead of one per new size. On "
                              "the CPU batches run at their own size (padding would only cost "
                              "time).")
    trt_cache_dir: str | None = opt(None, "TensorRT engine cache folder (an engine takes "
                                    "minutes to build; cached, it is built once per model and "
                                    "size); default 'trt-cache' in state_dir. Relative paths "
                                    "resolve against the config file's folder.")
    trt_fp16: bool = opt(False, "Let TensorRT build FP16 engines: faster on GPUs with tensor "
                         "cores, outputs differ slightly from FP32 (accuracy not measured "
                         "here).")


@dataclass
class CameraConfig:
    id: str = opt("cam1", "Short id used in topics and logs (letters, digits, - and _).")
    name: str = opt("", "Human-readable name, e.g. 'Entrance'.")
    source: str = opt("", "A V4L2 device (/dev/video0) or index (0), an rtsp:// or http:// "
                      "URL, a video file, a folder of images or one still photo.")
    fps: float = opt(15.0, "Frames per second to process at most (newer frames in between "
                     "are passed over); also the rate a still photo or image folder is shown "
                     "at.", min=0.1, max=120)
    detect_width: int | None = opt(None, "Detection width for this camera (pixels, multiple "
                                   "of 32); default detector.input_width.", min=64, max=4096)
    loop: bool = opt(False, "Start a video file or image folder again when it ends.")
    stall_timeout_s: float = opt(10.0, "A stream that delivers no frame for this long is "
                                 "reopened (with backoff).", min=1, max=600)


@dataclass
class TrackerConfig:
    high_threshold: float = opt(0.5, "Detections at least this confident start tracks and "
                                "are matched first.", min=0.0, max=1.0)
    low_threshold: float = opt(0.2, "Weaker detections (down to this) only continue existing "
                               "tracks (ByteTrack's second pass).", min=0.0, max=1.0)
    match_iou: float = opt(0.3, "Minimum overlap between a track's predicted box (for a face "
                           "lost for a moment, also where it was last seen) and a detection "
                           "to match them.", min=0.0, max=1.0)
    min_hits: int = opt(3, "Frames a new track must be matched in before it counts.",
                        min=1, max=100)
    max_age_s: float = opt(3.0, "Seconds a track survives without a detection (someone "
                           "turning away, or hidden behind another shopper) before the visit "
                           "ends; a face back near where it was within this time is the same "
                           "visitor. Longer merges more of those, but also more of someone "
                           "stepping into a spot just left.", min=0.0, max=60)


@dataclass
class AudienceConfig:
    reclassify_interval_s: float = opt(2.0, "Classify a tracked face again after this long "
                                       "(until max_samples).", min=0.1, max=3600)
    max_samples: int = opt(8, "Classifications per person at most; their mean is the label.",
                           min=1, max=1000)
    better_face_ratio: float = opt(1.3, "Also classify again when the face is this much better "
                                   "(width x frontalness) than the best so far.", min=1, max=10)
    attention_max_yaw: float = opt(0.2, "Head turn (nose offset in eye distances) up to which "
                                   "a face counts as looking at the display.", min=0, max=1)
    attention_max_pitch: float = opt(0.25, "Head tilt up/down (relative) up to which a face "
                                     "counts as looking.", min=0, max=1)
    min_attention_s: float = opt(1.0, "Looking for at least this long makes a visitor a "
                                 "watcher.", min=0, max=3600)
    min_visit_s: float = opt(0.5, "Visits shorter than this are not counted as visitors.",
                             min=0, max=3600)
    min_confidence: float = opt(0.5, "Age-class confidence a visitor needs to be counted in "
                                "a class; others are counted as unclassified.", min=0, max=1)
    interval_s: float = opt(60.0, "Reporting interval for visitor counts, seconds.",
                            min=1, max=86400)


@dataclass
class StatsConfig:
    interval_s: float = opt(10.0, "How often pipeline statistics are logged and published.",
                            min=1, max=3600)


@dataclass
class TlsConfig:
    enabled: bool = opt(False, "Connect with TLS (port 8883 on most brokers).")
    ca_file: str | None = opt(None, "CA certificate file that signed the broker's certificate; "
                              "default: the system's trusted CAs.")
    cert_file: str | None = opt(None, "Client certificate file, where the broker asks for one.")
    key_file: str | None = opt(None, "Private key of the client certificate.")


@dataclass
class MqttConfig:
    enabled: bool = opt(False, "Publish availability, audience, counts, decisions and stats to "
                        "an MQTT broker (topics: README \"MQTT topics\"). Offline runs "
                        "(`edge run --source FILE` without --realtime) never publish.")
    host: str = opt("localhost", "Broker host name or address.")
    port: int = opt(1883, "Broker port (usually 1883, or 8883 with TLS).", min=1, max=65535)
    protocol: str = opt("3.1.1", "MQTT protocol version.", choices=("3.1.1", "5"))
    client_id: str = opt("", "MQTT client id; default edge-<store_id>. Must be unique on the "
                         "broker.")
    keepalive_s: int = opt(30, "Seconds between keepalive pings; the broker declares the service "
                           "offline (last will) after 1.5 times this without traffic.",
                           min=2, max=3600)
    username: str | None = opt(None, "User name; the environment variable EDGE_MQTT_USERNAME "
                               "overrides it.")
    password: str | None = opt(None, "Password. Better left out of this file: set "
                               "EDGE_MQTT_PASSWORD (e.g. in the unit's EnvironmentFile) instead.")
    tls: TlsConfig = section(TlsConfig, "TLS to the broker.")
    topic_prefix: str = opt("edge", "First level of every topic: <topic_prefix>/<store_id>/...")
    store_id: str = opt("store1", "This store's id, second level of every topic (letters, "
                        "digits, - and _).")
    outbox_max: int = opt(10000, "Interval reports kept while the broker is unreachable (about "
                          "7 days of one camera at 60 s intervals); past this the oldest are "
                          "dropped, each drop logged. Kept on disk in state_dir across "
                          "restarts.", min=10, max=1000000)


@dataclass
class DisplayConfig:
    id: str = opt("display1", "Short id used in topics and the player's address (letters, "
                  "digits, - and _).")
    name: str = opt("", "Human-readable name, e.g. 'Window screen'.")
    camera: str = opt("", "Id of the camera whose audience this display follows.")


@dataclass
class SelectorConfig:
    catalog: str = opt("ads/catalog.yaml", "Ad catalog (README \"Ad catalog\"); relative to "
                       "the config file's folder.")
    children: str = opt("family_safe", "When children dominate the audience: family_safe shows "
                        "the catalog's family_safe ad and never targets children by their "
                        "profile (default; README explains why); target lets ads targeted at "
                        "the child class be chosen.", choices=("family_safe", "target"))
    child_share: float = opt(0.5, "Share of the audience weight above which children dominate.",
                             min=0, max=1)
    min_dwell_s: float = opt(1.0, "A person counts for ad selection once in view this long: "
                             "someone walking past does not switch the display, and the "
                             "first frames' labels are still unsteady.", min=0, max=60)
    passerby_weight: float = opt(0.3, "Weight of a person who has not (yet) looked at the "
                                 "display; someone who has looked for audience.min_attention_s "
                                 "weighs 1.", min=0, max=1)


@dataclass
class PlayerConfig:
    listen: str = opt("127.0.0.1", "Address the display player's web server listens on; "
                      "0.0.0.0 lets displays elsewhere on the store network open it.")
    port: int = opt(8080, "Port of the display player's web server; 0 turns it off.",
                    min=0, max=65535)


@dataclass
class Config:
    models: ModelsConfig = section(ModelsConfig, "Model files.")
    detector: DetectorConfig = section(DetectorConfig, "Face detection.")
    classifier: ClassifierConfig = section(ClassifierConfig, "Age and gender classification.")
    runtime: RuntimeConfig = section(RuntimeConfig, "Inference runtime.")
    cameras: list = field(default_factory=list, metadata={
        "doc": "Cameras, each a mapping with the keys below.", "items": CameraConfig})
    tracker: TrackerConfig = section(TrackerConfig, "Face tracking.")
    audience: AudienceConfig = section(AudienceConfig, "Per-person demographics and counts.")
    stats: StatsConfig = section(StatsConfig, "Pipeline statistics.")
    mqtt: MqttConfig = section(MqttConfig, "MQTT broker connection and topics.")
    displays: list = field(default_factory=list, metadata={
        "doc": "Smart displays, each a mapping with the keys below.", "items": DisplayConfig})
    selector: SelectorConfig = section(SelectorConfig, "Ad selection.")
    player: PlayerConfig = section(PlayerConfig, "The display player's web server.")
    state_dir: str | None = opt(None, "Folder for state kept across restarts (the MQTT outbox); "
                                "default $STATE_DIRECTORY (systemd's StateDirectory=) or "
                                "'state' beside the config file.")
    log_level: str = opt("info", "Logging level.", choices=("debug", "info", "warning", "error"))

    # Where the config came from; relative paths resolve against its folder.
    base_dir: Path = field(default=PROJECT_ROOT, repr=False, metadata={"internal": True})

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    def state_path(self) -> Path:
        if self.state_dir:
            return self.resolve(self.state_dir)
        systemd_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        return Path(systemd_dir) if systemd_dir else self.base_dir / "state"


def load(path: str | Path | None) -> Config:
    """Load and validate a config file; None gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    data = read_yaml(path, "config", ConfigError)
    if data is None:
        data = {}
    config = build(Config, data, str(path), "")
    config.base_dir = path.resolve().parent
    _cross_checks(config, str(path))
    return config


def read_yaml(path: Path, what: str, error: type[Exception]) -> Any:
    """Parsed YAML, or `error` naming the file and what it is (config, catalog, manifest)."""
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{path}: {what} is not valid YAML: {exc}") from exc


def build(cls: type, data: Any, file: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: '{prefix or '(top level)'}' must be a mapping, "
                          f"got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in '{prefix}'" if prefix else ""
        raise ConfigError(f"{file}: unknown key '{_join(prefix, unknown[0])}'{where}; "
                          f"known keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        f, key = fields[name], _join(prefix, name)
        if f.metadata.get("section"):
            values[name] = build(hints[name], value, file, key)
        elif f.metadata.get("items"):
            if not isinstance(value, list):
                raise ConfigError(f"{file}: '{key}' must be a list, got {type(value).__name__}")
            values[name] = [build(f.metadata["items"], item, file, f"{key}[{i}]")
                            for i, item in enumerate(value)]
        else:
            values[name] = _check_value(value, hints[name], f.metadata, file, key)
    return cls(**values)


def _check_value(value: Any, hint: Any, meta: dict, file: str, key: str) -> Any:
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{file}: '{key}' must not be empty")
    base = next(t for t in allowed if t is not type(None))
    origin = typing.get_origin(base) or base
    ok = isinstance(value, origin) and not (origin in (int, float) and isinstance(value, bool))
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"{file}: '{key}' must be {_type_name(origin)}, got {value!r}")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{file}: '{key}' is {value!r}; choose one of {', '.join(choices)}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo or hi is not None and value > hi:
        raise ConfigError(f"{file}: '{key}' is {value}; allowed range {lo}..{hi}")
    return value


def _cross_checks(config: Config, file: str) -> None:
    for provider in config.runtime.providers:
        if provider not in PROVIDERS:
            raise ConfigError(f"{file}: 'runtime.providers' has {provider!r}; "
                              f"choose from {', '.join(PROVIDERS)}")
    problem = bucket_problem(config.runtime.batch_buckets)
    if problem:
        raise ConfigError(f"{file}: {problem}")
    if config.classifier.child_below >= config.classifier.old_from:
        raise ConfigError(f"{file}: 'classifier.child_below' ({config.classifier.child_below:g}) "
                          f"must be below 'classifier.old_from' ({config.classifier.old_from:g})")
    if config.detector.backend != "centerface" and not config.detector.model:
        raise ConfigError(f"{file}: 'detector.model' must name the model file for backend "
                          f"'{config.detector.backend}'")
    seen = set()
    for i, camera in enumerate(config.cameras):
        where = f"{file}: 'cameras[{i}]"
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", camera.id):
            raise ConfigError(f"{where}.id' is {camera.id!r}; use letters, digits, - and _")
        if camera.id in seen:
            raise ConfigError(f"{where}.id' repeats camera id {camera.id!r}")
        seen.add(camera.id)
        if not camera.source:
            raise ConfigError(f"{where}.source' is missing: name a device, URL, file or folder")
    if config.tracker.low_threshold > config.tracker.high_threshold:
        raise ConfigError(f"{file}: 'tracker.low_threshold' must not exceed "
                          f"'tracker.high_threshold'")
    _check_ids(config, file)
    if config.classifier.backend == "insightface" and not config.classifier.model:
        raise ConfigError(f"{file}: 'classifier.model' must name genderage.onnx for backend "
                          f"'insightface'")
    _check_ensemble(config.classifier, file)


def _check_ensemble(c, file: str) -> None:
    if c.backend != "ensemble":
        return
    members = ("cydral", "faceapi", "insightface")
    if not c.members or any(m not in members for m in c.members) \
            or len(set(c.members)) != len(c.members):
        raise ConfigError(f"{file}: 'classifier.members' is {c.members!r}; list backends once "
                          f"each, from {', '.join(members)}")
    if "insightface" in c.members and not c.model:
        raise ConfigError(f"{file}: 'classifier.model' must name genderage.onnx for ensemble "
                          f"member 'insightface'")
    for key, weights in (("weights", c.weights), ("gender_weights", c.gender_weights)):
        if weights is not None and (
                len(weights) != len(c.members)
                or any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0
                       for w in weights) or sum(weights) <= 0):
            raise ConfigError(f"{file}: 'classifier.{key}' is {weights!r}; give one number "
                              f">= 0 per member of {c.members!r}, not all zero")


def bucket_problem(buckets) -> str:
    """What is wrong with runtime.batch_buckets, '' if nothing (runtime.GpuOptions too)."""
    if not buckets or any(isinstance(b, bool) or not isinstance(b, int) or b < 1
                          for b in buckets):
        return (f"'runtime.batch_buckets' is {list(buckets or [])}; give batch sizes of 1 or "
                f"more, e.g. [1, 4, 16, 64, 128]")
    return ""


def _check_ids(config: Config, file: str) -> None:
    """Ids that end up in MQTT topics and URLs: safe characters, no repeats."""
    if not _ID.fullmatch(config.mqtt.store_id):
        raise ConfigError(f"{file}: 'mqtt.store_id' is {config.mqtt.store_id!r}; use letters, "
                          f"digits, - and _")
    if not re.fullmatch(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*", config.mqtt.topic_prefix):
        raise ConfigError(f"{file}: 'mqtt.topic_prefix' is {config.mqtt.topic_prefix!r}; use "
                          f"letters, digits, - and _, levels separated by /")
    cameras = {c.id for c in config.cameras}
    seen = set()
    for i, display in enumerate(config.displays):
        where = f"{file}: 'displays[{i}]"
        if not _ID.fullmatch(display.id):
            raise ConfigError(f"{where}.id' is {display.id!r}; use letters, digits, - and _")
        if display.id in seen:
            raise ConfigError(f"{where}.id' repeats display id {display.id!r}")
        seen.add(display.id)
        if display.camera not in cameras:
            raise ConfigError(f"{where}.camera' is {display.camera!r}; name one of the "
                              f"configured cameras ({', '.join(sorted(cameras)) or 'none'})")


_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _type_name(t: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            list: "a list", dict: "a mapping"}.get(t, t.__name__)


def reference(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, doc) for every key, for the README's configuration reference."""
    rows = []
    defaults = cls()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        key = _join(prefix, f.name)
        if f.metadata.get("section"):
            rows.extend(reference(hints[f.name], key))
        elif f.metadata.get("items"):
            rows.append((key, [], f.metadata["doc"]))
            rows.extend(reference(f.metadata["items"], f"{key}[]"))
        else:
            rows.append((key, getattr(defaults, f.name), f.metadata["doc"]))
    return rows
