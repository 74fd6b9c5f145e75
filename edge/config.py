"""Typed configuration: one dataclass per section, unknown keys rejected.

Every key, its default and its meaning is documented here once (the `doc`
metadata), and docs/reference.md's configuration reference is generated from it with
`edge config --reference`. Loading checks types, choices and ranges and raises
ConfigError naming the file and the dotted key, so `edge run` can exit 78.

The dataclasses are frozen: a command that needs other settings (a --source
camera, the bench's cameras) makes a copy with dataclasses.replace, so the
config that was validated is the one every part holding it still sees.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from edge.credentials import load_secret
from edge.errors import ConfigError
from edge.redact import password, redact, remember

PROVIDERS = ("tensorrt", "cuda", "cpu")
# Without a config file, relative paths (models/) resolve against the checkout.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def opt(
    default: Any,
    doc: str,
    *,
    choices: tuple | None = None,
    low: float | None = None,
    high: float | None = None,
    nonempty: bool = False,
) -> Any:
    """A config field with its documentation and validation rules: the allowed range
    `low`..`high` (inclusive), `nonempty` for a string that must not be blank."""
    meta = {"doc": doc, "choices": choices, "low": low, "high": high, "nonempty": nonempty}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, doc: str) -> Any:
    return field(default_factory=cls, metadata={"doc": doc, "section": True})


@dataclass(frozen=True)
class ModelsConfig:
    dir: str = opt(
        "models",
        "Folder holding the model files and manifest.yaml; relative paths "
        "are resolved against the config file's folder.",
        nonempty=True,
    )


@dataclass(frozen=True)
class DetectorConfig:
    backend: str = opt(
        "centerface",
        "Face detector: centerface (default, MIT, fetched by "
        "`edge models fetch`), scrfd (InsightFace model file you provide) or "
        "yunet (OpenCV Zoo model file you provide).",
        choices=("centerface", "scrfd", "yunet"),
    )
    model: str | None = opt(None, "Model file for the scrfd or yunet backends.")
    input_width: int = opt(
        640,
        "Width in pixels the frame is scaled to for detection "
        "(rounded up to a multiple of 32); height follows the aspect ratio. "
        "Narrower frames are not upscaled.",
        low=64,
        high=4096,
    )
    score_threshold: float = opt(0.5, "Minimum detector confidence for a face.", low=0.0, high=1.0)
    nms_iou: float = opt(
        0.3, "Overlap (IoU) above which the weaker of two boxes is dropped.", low=0.0, high=1.0
    )
    min_face_px: int = opt(
        20,
        "Faces narrower than this, in frame pixels, are ignored: too small to classify reliably.",
        low=1,
        high=4096,
    )


@dataclass(frozen=True)
class ClassifierConfig:
    backend: str = opt(
        "ensemble",
        "Age/gender model: cydral (CC0, dlib-models age and gender "
        "networks, trained on the publisher's own data), faceapi (face-api.js's "
        "AgeGenderNet, MIT weights trained partly on research-only datasets), "
        "faceapi-fairface (that network fine-tuned here on FairFace, CC BY 4.0: "
        "models/faceapi-fairface.md), cydral-fairface (Cydral's networks fine-tuned "
        "here on FairFace: CC0 weights, CC BY data; models/cydral-fairface.md), "
        "ensemble (the mean of classifier.members) or insightface (a "
        "genderage.onnx you provide; the InsightFace packs are licensed for "
        "non-commercial use only). Default: the ensemble of faceapi-fairface and "
        "cydral-fairface, the best measured on FairFace val (docs/calibration.md "
        "section 12). "
        'README "Models" lists each one\'s training data.',
        choices=(
            "cydral",
            "faceapi",
            "faceapi-fairface",
            "cydral-fairface",
            "ensemble",
            "insightface",
        ),
    )
    members: list = opt(
        ["faceapi-fairface", "cydral-fairface"],
        "Backends averaged by backend: ensemble (any of cydral, faceapi, "
        "faceapi-fairface, cydral-fairface, insightface; each once).",
    )
    weights: list | None = opt(
        None,
        "Ensemble weights for age and age class, one per member. "
        "Default: those calibrated for the members (faceapi-fairface 0.7, "
        "cydral-fairface 0.3; faceapi 0.7, cydral 0.3; docs/calibration.md), "
        "equal for other member sets.",
    )
    gender_weights: list | None = opt(
        None,
        "Ensemble weights for P(male) (pooled on the "
        "log-odds scale), one per member. Default: those calibrated for the "
        "members (faceapi-fairface 0.3, cydral-fairface 0.7: docs/calibration.md "
        "section 15), equal for other member sets (section 10).",
    )
    model: str | None = opt(None, "Model file for the insightface backend (genderage.onnx).")
    child_below: float = opt(
        18, "Age classes as reported: child is younger than this.", low=1, high=100
    )
    old_from: float = opt(60, "Age classes as reported: old is this age or older.", low=1, high=100)
    flip_tta: bool = opt(
        True,
        "Also classify the mirrored face chip and average: costs a "
        "second image per face in the same batch, steadies predictions.",
    )
    calibrated: bool = opt(
        True,
        "Apply the age calibration documented in docs/calibration.md "
        "(corrects the model's under-estimation of older faces). Off gives "
        "the raw model output.",
    )
    exposure_floor: float = opt(
        90,
        "Faces darker than this (mean luma of the face centre, "
        "0-255) are brightened up to it before the networks see "
        "them: backlit entrances, dim aisles. 90 is the 5th "
        "percentile of the well-exposed development faces "
        "(docs/calibration.md); 0 turns it off.",
        low=0,
        high=255,
    )
    turned_yaw: float = opt(
        2.0,
        "How far a head may be turned before face-api's network gets a crop from the "
        "detector's box instead of from the eye line (edge/pipeline/pose.py: 0 is "
        "frontal, 1 the nose tip below an eye; 2, the default, is never). The eye-line "
        "crop zooms into or shows half of a turned face; the box crop helps a network "
        "trained on such crops. face-api's own network was not, and on FairFace val 0.5 "
        "moved it little (docs/calibration.md section 11).",
        low=0,
        high=2,
    )
    max_faces_per_tick: int = opt(
        6,
        "Faces classified in one tick at most, all cameras together. When a crowd "
        "walks in, new faces are classified over the next ticks, biggest and most "
        "frontal first, and reclassifications wait behind them, so no tick holds the "
        "loop for seconds (docs/benchmarks.md, crowd). 0: no limit.",
        low=0,
        high=1000,
    )


@dataclass(frozen=True)
class RuntimeConfig:
    providers: list[str] = opt(
        ["cuda", "cpu"],
        "ONNX Runtime execution providers in order "
        "of preference (tensorrt, cuda, cpu). GPU providers are "
        "skipped, with one log line, where no GPU (or no CUDA library "
        "they need) is present.",
    )
    threads: int = opt(
        0, "CPU threads per inference session; 0 lets ONNX Runtime decide.", low=0, high=256
    )
    batch_buckets: list[int] = opt(
        [1, 4, 16, 64, 128],
        "Batch sizes fed to a GPU provider: "
        "a batch (classifier chips, detector frames of one size) is "
        "padded up to the next, larger ones split at the largest, so "
        "CUDA and TensorRT plan a few shapes once instead of one per "
        "new size. On the CPU batches run at their own size (padding "
        "would only cost time).",
    )
    trt_cache_dir: str | None = opt(
        None,
        "TensorRT engine cache folder (an engine takes "
        "minutes to build; cached, it is built once per model and "
        "size); default 'trt-cache' in state_dir. Relative paths "
        "resolve against the config file's folder.",
    )
    trt_fp16: bool = opt(
        False,
        "Let TensorRT build FP16 engines: faster on GPUs with tensor "
        "cores, outputs differ slightly from FP32 (accuracy not measured "
        "here).",
    )


@dataclass(frozen=True)
class CameraConfig:
    id: str = opt("cam1", "Short id used in topics and logs (letters, digits, - and _).")
    name: str = opt("", "Human-readable name, e.g. 'Entrance'.")
    source: str = opt(
        "",
        "A V4L2 device (/dev/video0) or index (0), an rtsp:// or http:// "
        "URL, a video file, a folder of images or one still photo.",
    )
    fps: float = opt(
        15.0,
        "Frames per second to process at most (newer frames in between "
        "are passed over); also the rate a still photo or image folder is shown "
        "at.",
        low=0.1,
        high=120,
    )
    detect_width: int | None = opt(
        None,
        "Detection width for this camera (pixels, multiple of 32); default detector.input_width.",
        low=64,
        high=4096,
    )
    loop: bool = opt(False, "Start a video file or image folder again when it ends.")
    stall_timeout_s: float = opt(
        10.0,
        "A stream that delivers no frame for this long is reopened (with backoff).",
        low=1,
        high=600,
    )
    motion: bool = opt(
        True,
        "Motion-gated detection: in a still scene with nobody tracked, "
        "skip the face detector (a cheap motion test on a small grey copy of "
        "each frame decides). Anyone tracked, and any motion, keeps it running. "
        "false turns the gate off (tracked_detect_fps still applies).",
    )
    idle_detect_s: float = opt(
        1.0,
        "With motion gating, a still scene with nobody tracked is "
        "still searched this often: someone who came in too slowly or "
        "stood still facing away is found within this time.",
        low=0.05,
        high=60,
    )
    tracked_detect_fps: float | None = opt(
        3.5,
        "While every face in view is a confirmed track, "
        "detect at most this often; the tracker carries "
        "the faces through the frames in between (a "
        "reclassification that falls due is detected at the "
        "next frame with room). New, unconfirmed faces are "
        "detected in every frame. null detects every frame.",
        low=0.5,
        high=120,
    )


@dataclass(frozen=True)
class TrackerConfig:
    high_threshold: float = opt(
        0.5,
        "Detections at least this confident start tracks and are matched first.",
        low=0.0,
        high=1.0,
    )
    low_threshold: float = opt(
        0.2,
        "Weaker detections (down to this) only continue existing tracks (ByteTrack's second pass).",
        low=0.0,
        high=1.0,
    )
    match_iou: float = opt(
        0.3,
        "Minimum overlap between a track's predicted box (for a face "
        "lost for a moment, also where it was last seen) and a detection "
        "to match them.",
        low=0.0,
        high=1.0,
    )
    min_hits: int = opt(
        3, "Frames a new track must be matched in before it counts.", low=1, high=100
    )
    max_age_s: float = opt(
        3.0,
        "Seconds a track survives without a detection (someone "
        "turning away, or hidden behind another shopper) before the visit "
        "ends; a face back near where it was within this time is the same "
        "visitor. Longer merges more of those, but also more of someone "
        "stepping into a spot just left.",
        low=0.0,
        high=60,
    )


@dataclass(frozen=True)
class AudienceConfig:
    reclassify_interval_s: float = opt(
        2.0,
        "Classify a tracked face again after this long (until max_samples).",
        low=0.1,
        high=3600,
    )
    max_samples: int = opt(
        8, "Classifications per person at most; their mean is the label.", low=1, high=1000
    )
    better_face_ratio: float = opt(
        1.3,
        "Also classify again when the face is this much better "
        "(width x frontalness) than the best so far.",
        low=1,
        high=10,
    )
    attention_max_yaw: float = opt(
        0.2,
        "Head turn (nose offset in eye distances) up to which "
        "a face counts as looking at the display.",
        low=0,
        high=1,
    )
    attention_max_pitch: float = opt(
        0.25, "Head tilt up/down (relative) up to which a face counts as looking.", low=0, high=1
    )
    min_attention_s: float = opt(
        1.0, "Looking for at least this long makes a visitor a watcher.", low=0, high=3600
    )
    min_visit_s: float = opt(
        0.5,
        "Visits shorter than this are counted as unclassified visitors (in no age class "
        "or gender).",
        low=0,
        high=3600,
    )
    min_confidence: float = opt(
        0.5,
        "Age-class confidence a visitor needs to be counted in "
        "a class; others are counted as unclassified.",
        low=0,
        high=1,
    )
    gender_margin: float = opt(
        0.15,
        "A visitor whose P(male), after all their samples, stays "
        "within this of 0.5 is counted under gender_unknown for their "
        "age class rather than forced into a gender; 0 always picks "
        "one.",
        low=0,
        high=0.5,
    )
    interval_s: float = opt(
        60.0, "Reporting interval for visitor counts, seconds.", low=1, high=86400
    )


@dataclass(frozen=True)
class StatsConfig:
    interval_s: float = opt(
        10.0, "How often pipeline statistics are logged and published.", low=1, high=3600
    )


@dataclass(frozen=True)
class TlsConfig:
    enabled: bool = opt(False, "Connect with TLS (port 8883 on most brokers).")
    ca_file: str | None = opt(
        None,
        "CA certificate file that signed the broker's certificate; "
        "default: the system's trusted CAs.",
    )
    cert_file: str | None = opt(None, "Client certificate file, where the broker asks for one.")
    key_file: str | None = opt(None, "Private key of the client certificate.")


@dataclass(frozen=True)
class HomeAssistantConfig:
    enabled: bool = opt(
        True,
        "Announce the box to Home Assistant by MQTT discovery (docs/reference.md "
        '"Home Assistant"): one device with sensors per camera and display, '
        "sent retained on every connect. Turning it off removes what was "
        "announced at the next connect.",
    )
    prefix: str = opt(
        "homeassistant",
        "Home Assistant's MQTT discovery prefix (its MQTT "
        "integration's setting; homeassistant unless changed there).",
    )


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = opt(
        False,
        "Publish availability, audience, counts, decisions and stats to "
        'an MQTT broker (topics: docs/reference.md "MQTT topics"). Offline runs '
        "(`edge run --source FILE` without --realtime) never publish.",
    )
    host: str = opt("localhost", "Broker host name or address.", nonempty=True)
    port: int = opt(1883, "Broker port (usually 1883, or 8883 with TLS).", low=1, high=65535)
    protocol: str = opt("3.1.1", "MQTT protocol version.", choices=("3.1.1", "5"))
    client_id: str = opt(
        "", "MQTT client id; default edge-<store_id>. Must be unique on the broker."
    )
    keepalive_s: int = opt(
        30,
        "Seconds between keepalive pings; the broker declares the service "
        "offline (last will) after 1.5 times this without traffic.",
        low=2,
        high=3600,
    )
    username: str | None = opt(
        None, "User name; the environment variable EDGE_MQTT_USERNAME overrides it."
    )
    password: str | None = opt(
        None,
        "Password. Better left out of this file: set "
        "EDGE_MQTT_PASSWORD (e.g. in the unit's EnvironmentFile) instead.",
    )
    tls: TlsConfig = section(TlsConfig, "TLS to the broker.")
    topic_prefix: str = opt("edge", "First level of every topic: <topic_prefix>/<store_id>/...")
    store_id: str = opt(
        "store1", "This store's id, second level of every topic (letters, digits, - and _)."
    )
    outbox_max: int = opt(
        10000,
        "Interval reports kept while the broker is unreachable (about "
        "7 days of one camera at 60 s intervals); past this the oldest are "
        "dropped, each drop logged. Kept on disk in state_dir across "
        "restarts.",
        low=10,
        high=1000000,
    )
    home_assistant: HomeAssistantConfig = section(
        HomeAssistantConfig, "Home Assistant MQTT discovery."
    )


@dataclass(frozen=True)
class DisplayConfig:
    id: str = opt(
        "display1", "Short id used in topics and the player's address (letters, digits, - and _)."
    )
    name: str = opt("", "Human-readable name, e.g. 'Window screen'.")
    camera: str = opt("", "Id of the camera whose audience this display follows.")


@dataclass(frozen=True)
class SelectorConfig:
    catalog: str = opt(
        "ads/catalog.yaml",
        'Ad catalog (README "Ad catalog"); relative to the config file\'s folder.',
        nonempty=True,
    )
    children: str = opt(
        "family_safe",
        "When children dominate the audience: family_safe shows "
        "the catalog's family_safe ad and never targets children by their "
        "profile (default; README explains why); target lets ads targeted at "
        "the child class be chosen.",
        choices=("family_safe", "target"),
    )
    child_share: float = opt(
        0.5,
        "Share of the audience weight above which children dominate "
        "(each person adds their probability of being a child, times "
        "their attention weight).",
        low=0,
        high=1,
    )
    child_guard: float = opt(
        0.3,
        "A person at least this likely to be a child (P(child)) is "
        "never counted in an adult or old targeting segment, whatever "
        "their most likely class: a missed child costs more than a missed "
        "adult. 1 turns the guard off.",
        low=0,
        high=1,
    )
    min_dwell_s: float = opt(
        1.0,
        "A person counts for ad selection once in view this long: "
        "someone walking past does not switch the display, and the "
        "first frames' labels are still unsteady.",
        low=0,
        high=60,
    )
    passerby_weight: float = opt(
        0.3,
        "Weight of a person who has not (yet) looked at the "
        "display; someone who has looked for audience.min_attention_s "
        "weighs 1.",
        low=0,
        high=1,
    )


@dataclass(frozen=True)
class PlayerConfig:
    listen: str = opt(
        "127.0.0.1",
        "Address the display player's web server listens on; "
        "0.0.0.0 lets displays elsewhere on the store network open it.",
        nonempty=True,
    )
    port: int = opt(
        8080, "Port of the display player's web server; 0 turns it off.", low=0, high=65535
    )
    max_streams: int = opt(
        32,
        "Display pages the player serves at once (each open page holds "
        "one event stream and one thread); one more is answered 503 and "
        "retries by itself. Raise it for more than about 20 displays.",
        low=1,
        high=10000,
    )
    max_streams_per_client: int = opt(
        4,
        "Display pages one address may hold open at once: one machine "
        "cannot take every slot and lock the other displays out.",
        low=1,
        high=10000,
    )
    allowed_hosts: list[str] = opt(
        [],
        "Hosts whose http(s) URLs a content message may name although the "
        "ad catalog does not (e.g. head office's ad server for overrides); "
        "exact names, or '.example.com' for its subdomains. Anything else "
        "that is not one of the catalog's creatives is rejected and counted. "
        "Loopback, private and link-local addresses are allowed only when "
        "listed here one by one.",
    )


@dataclass(frozen=True)
class DashboardConfig:
    enabled: bool = opt(True, "Serve the store dashboard (/dashboard); false turns it off.")
    listen: str | None = opt(
        None,
        "Address the dashboard listens on; default player.listen. Off "
        "loopback it asks for a key: EDGE_DASHBOARD_KEY in the environment, "
        "or the credential file dashboard-key (systemd's LoadCredential=); "
        "without one it answers 403, with one log line at start.",
    )
    port: int | None = opt(
        None,
        "Port of a server of the dashboard's own; default: served by the "
        "display player's server (player.port). Give one to keep the "
        "dashboard on 127.0.0.1 while the displays' player listens on the "
        "store network.",
        low=1,
        high=65535,
    )
    max_streams: int = opt(
        16,
        "Dashboard pages served at once (each holds one event stream and "
        "one thread); one more is answered 503.",
        low=1,
        high=1000,
    )
    max_streams_per_client: int = opt(
        4, "Dashboard pages one address may hold open at once.", low=1, high=1000
    )


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = opt(
        "127.0.0.1",
        "Address the Prometheus metrics endpoint (/metrics, docs/reference.md "
        '"Prometheus metrics") listens on; 0.0.0.0 lets a Prometheus '
        "elsewhere scrape it.",
    )
    port: int = opt(
        9108,
        "Port of the metrics endpoint; 0 turns it off. Served by `edge run` "
        "(not by offline file analysis).",
        low=0,
        high=65535,
    )
    max_connections: int = opt(
        16,
        "Connections the metrics endpoint serves at once; more are "
        "closed at once (a scrape takes one, briefly).",
        low=1,
        high=1000,
    )


@dataclass(frozen=True)
class StoreConfig:
    enabled: bool = opt(
        True,
        "Keep interval counts and plays in the local audience store, "
        "<state_dir>/audience.db (SQLite), for `edge report` and the "
        "dashboard. Offline runs (`edge run --source FILE`) write to it only "
        "with --store.",
    )
    retention_days: float = opt(
        90,
        "Days the audience store keeps records; older ones are removed at start and once a day.",
        low=1,
        high=3650,
    )


@dataclass(frozen=True)
class ServeConfig:
    listen: str = opt(
        "127.0.0.1",
        "Address the photo check API (`edge serve`) listens on. Off the "
        "loopback interface it requires an API key: EDGE_API_KEY, "
        "'serve.api_key_file', or the credential photo-api-key (systemd's "
        "LoadCredential=).",
        nonempty=True,
    )
    port: int = opt(8090, "Port of the photo check API.", low=0, high=65535)
    api_key_file: str | None = opt(
        None,
        "File holding the API key (one line). Default: "
        "$CREDENTIALS_DIRECTORY/photo-api-key when systemd provides it; "
        "EDGE_API_KEY in the environment comes first.",
    )
    max_body_mb: float = opt(
        20,
        "Largest request body (all photos of a request together), in MB; a "
        "larger one is answered 413 before it is read.",
        low=0.01,
        high=256,
    )
    max_photos: int = opt(8, "Photos one request may carry (multipart).", low=1, high=64)
    max_requests: int = opt(
        4,
        "Requests handled at once (reading, decoding, waiting for or running "
        "the models); one more is answered 503 with Retry-After.",
        low=1,
        high=256,
    )
    deadline_s: float = opt(
        30,
        "Seconds a request may take from its headers to the start of its "
        "analysis: the body must arrive (else 408) and the models be free "
        "(else 503) within it.",
        low=1,
        high=600,
    )


@dataclass(frozen=True)
class Config:
    models: ModelsConfig = section(ModelsConfig, "Model files.")
    detector: DetectorConfig = section(DetectorConfig, "Face detection.")
    classifier: ClassifierConfig = section(ClassifierConfig, "Age and gender classification.")
    runtime: RuntimeConfig = section(RuntimeConfig, "Inference runtime.")
    cameras: list[CameraConfig] = field(
        default_factory=list,
        metadata={"doc": "Cameras, each a mapping with the keys below.", "items": CameraConfig},
    )
    tracker: TrackerConfig = section(TrackerConfig, "Face tracking.")
    audience: AudienceConfig = section(AudienceConfig, "Per-person demographics and counts.")
    stats: StatsConfig = section(StatsConfig, "Pipeline statistics.")
    mqtt: MqttConfig = section(MqttConfig, "MQTT broker connection and topics.")
    displays: list[DisplayConfig] = field(
        default_factory=list,
        metadata={
            "doc": "Smart displays, each a mapping with the keys below.",
            "items": DisplayConfig,
        },
    )
    selector: SelectorConfig = section(SelectorConfig, "Ad selection.")
    player: PlayerConfig = section(PlayerConfig, "The display player's web server.")
    dashboard: DashboardConfig = section(DashboardConfig, "The store dashboard.")
    metrics: MetricsConfig = section(MetricsConfig, "Prometheus metrics endpoint.")
    store: StoreConfig = section(StoreConfig, "The local audience store.")
    serve: ServeConfig = section(ServeConfig, "The photo check API (`edge serve`).")
    state_dir: str | None = opt(
        None,
        "Folder for state kept across restarts (the MQTT outbox, "
        "the audience store); "
        "default $STATE_DIRECTORY (systemd's StateDirectory=) or "
        "'state' beside the config file.",
    )
    log_level: str = opt("info", "Logging level.", choices=("debug", "info", "warning", "error"))
    host_names: list[str] = opt(
        [],
        "Host names the box's web servers (display player, dashboard, "
        "metrics) answer to besides its own host name, localhost and the "
        "address a request arrived on, e.g. a DNS name the displays use; "
        "requests naming any other host get 421 (DNS rebinding).",
    )

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
    """Load and validate a config file; None gives the defaults. Every problem in the
    file is reported in one ConfigError, not one per restart."""
    return load_typed(path, Config, "config", _cross_checks)


T = TypeVar("T")


def load_typed(path: str | Path | None, cls: type[T], what: str, cross_checks) -> T:
    """A typed config file (config.yaml, edge hq's hq.yaml): `cls` built from it with
    `${NAME}` secrets resolved, its base_dir the file's folder, then
    cross_checks(config, problems); None gives cls's defaults. Every problem in one
    ConfigError line naming the file and the keys."""
    if path is None:
        return cls()
    path = Path(path)
    data = read_yaml(path, what, ConfigError)
    if data is None:
        data = {}
    problems = Problems()
    data = resolve_references(data, problems, "")
    config = build(cls, data, problems, "")
    if config is None:  # not even a mapping at the top
        raise ConfigError(f"{path}: {'; '.join(problems.messages)}")
    config = dataclasses.replace(config, base_dir=path.resolve().parent)
    cross_checks(config, problems)
    if problems.messages:
        raise ConfigError(f"{path}: {'; '.join(problems.messages)}")
    return config


_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def resolve_references(data: Any, problems: Problems, key: str) -> Any:
    """Every `${NAME}` in a string value replaced by the secret NAME: the environment
    variable (edge.env, the unit's EnvironmentFile) or the systemd credential of that
    name (LoadCredential=NAME:...). Camera URLs with passwords and the broker's password
    can so stay out of config.yaml. A name with no value is a problem naming the key
    and the name; the values are never part of a message."""
    if isinstance(data, dict):
        return {k: resolve_references(v, problems, _join(key, str(k))) for k, v in data.items()}
    if isinstance(data, list):
        return [resolve_references(v, problems, f"{key}[{i}]") for i, v in enumerate(data)]
    if not isinstance(data, str) or "${" not in data:
        return data

    def value(match: re.Match) -> str:
        secret = load_secret(match[1], match[1])
        if secret is None:
            problems.add(
                f"'{key}' refers to ${{{match[1]}}}, which is not set: set it in edge.env "
                f"or as a systemd credential (LoadCredential={match[1]}:...)",
                key,
            )
            return ""
        # masked wherever it may be printed: a camera URL's password, or a password
        hidden = password(secret) or (secret if key.endswith("password") else None)
        if hidden:
            remember(hidden)
        return secret

    return _REFERENCE.sub(value, data)


class _Rejected(yaml.constructor.ConstructorError):
    """Valid YAML that _StrictLoader refuses."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter where a typo would otherwise pass silently: a key
    given twice (PyYAML keeps the last one) and .nan/.inf (every range check passes a
    NaN) are errors naming their line."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # '<<' merges are meant to be overridden
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first_line.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:
                    continue  # unhashable: the base constructor reports it
                if earlier != key_node.start_mark.line + 1:
                    raise _Rejected(
                        None,
                        None,
                        f"key {key!r} is given twice (also on line {earlier}); keep one",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep)

    def construct_yaml_float(self, node):
        value = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise _Rejected(
                None,
                None,
                f"{node.value!r} is not a finite number; give a real value",
                node.start_mark,
            )
        return value


_StrictLoader.add_constructor("tag:yaml.org,2002:float", _StrictLoader.construct_yaml_float)


def read_yaml(path: Path, what: str, error: type[Exception]) -> Any:
    """Parsed YAML, or `error` naming the file and what it is (config, catalog, manifest).
    Shared by all three, so each gets the same checks: UTF-8, syntax, keys given
    twice, non-finite numbers."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise error(
            f"{path}: {what} is not UTF-8 text (line {line}, byte "
            f"0x{raw[exc.start]:02x}); save it as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except _Rejected as exc:
        raise error(f"{path}: {yaml_problem(exc)}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: {what} is not valid YAML: {yaml_problem(exc)}") from None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line ('line 3, column 5: ...'); PyYAML's own spans several
    and names a "<unicode string>" instead of the file."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    words = [w for w in (getattr(exc, "context", None), getattr(exc, "problem", None)) if w]
    text = ", ".join(words) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {text}" if mark else text


class Problems:
    """Every problem found in one config file, and the keys they concern, so that a
    cross-check is not reported on a key whose own value was already rejected."""

    def __init__(self):
        self.messages: list[str] = []
        self.bad: list[str] = []

    def add(self, message: str, key: str | None = None) -> None:
        self.messages.append(message)
        if key is not None:
            # A bad list item makes the whole item suspect ('cameras[1].fps' -> 'cameras[1]').
            self.bad.append(key[: key.index("]") + 1] if "]" in key else key)

    def cross(self, message: str) -> None:
        """A cross-check's message: dropped when it names a key already rejected."""
        if not any(f"'{key}" in message for key in self.bad):
            self.messages.append(message)


def build(cls: type, data: Any, problems: Problems, prefix: str) -> Any:
    """`cls` from a mapping; each bad value is added to `problems` and left at its
    default, so the rest of the file is still checked."""
    if not isinstance(data, dict):
        problems.add(
            f"'{prefix or '(top level)'}' must be a mapping, got {_type_name(type(data))}",
            prefix or "(top level)",
        )
        return None
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for name in sorted((k for k in data if k not in fields), key=str):
        where = f" in '{prefix}'" if prefix else ""
        problems.add(
            f"unknown key '{_join(prefix, str(name))}'{where}; "
            f"known keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        if name not in fields:
            continue
        f, key = fields[name], _join(prefix, name)
        if f.metadata.get("section"):
            built = build(hints[name], value, problems, key)
            if built is not None:
                values[name] = built
        elif f.metadata.get("items"):
            if not isinstance(value, list):
                problems.add(f"'{key}' must be a list, got {_type_name(type(value))}", key)
                continue
            item_cls = f.metadata["items"]
            # A rejected item keeps its place (as defaults), so later indices stay right.
            values[name] = [
                build(item_cls, item, problems, f"{key}[{i}]") or item_cls()
                for i, item in enumerate(value)
            ]
        else:
            try:
                values[name] = _check_value(value, hints[name], f.metadata, key)
            except ValueError as exc:
                problems.add(str(exc), key)
    return cls(**values)


def _check_value(value: Any, hint: Any, meta: Mapping[str, Any], key: str) -> Any:
    """The value, typed; ValueError saying what is wrong with it."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ValueError(f"'{key}' must not be empty")
    base = next(t for t in allowed if t is not type(None))
    origin = typing.get_origin(base) or base
    ok = isinstance(value, origin) and not (origin in (int, float) and isinstance(value, bool))
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        hint_text = ""
        if origin is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            # `source: 0` is read as a number: the device index must be written '0'.
            hint_text = f"; quote it: '{value}'"
        raise ValueError(f"'{key}' must be {_type_name(origin)}, got {value!r}{hint_text}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"'{key}' is {value}; give a finite number")
    if meta.get("nonempty") and isinstance(value, str) and not value.strip():
        raise ValueError(f"'{key}' must not be empty")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ValueError(f"'{key}' is {value!r}; choose one of {', '.join(choices)}")
    lo, hi = meta.get("low"), meta.get("high")
    if lo is not None and value < lo or hi is not None and value > hi:
        raise ValueError(f"'{key}' is {value}; allowed range {lo}..{hi}")
    return value


def _cross_checks(config: Config, problems: Problems) -> None:  # noqa: C901 (a flat list of rules)
    add = problems.cross
    for provider in config.runtime.providers:
        if provider not in PROVIDERS:
            add(f"'runtime.providers' has {provider!r}; choose from {', '.join(PROVIDERS)}")
    problem = bucket_problem(config.runtime.batch_buckets)
    if problem:
        add(problem)
    if config.classifier.child_below >= config.classifier.old_from:
        add(
            f"'classifier.child_below' ({config.classifier.child_below:g}) must be below "
            f"'classifier.old_from' ({config.classifier.old_from:g})"
        )
    if config.detector.backend != "centerface" and not config.detector.model:
        add(f"'detector.model' must name the model file for backend '{config.detector.backend}'")
    seen = set()
    for i, camera in enumerate(config.cameras):
        where = f"'cameras[{i}]"
        if not _ID.fullmatch(camera.id):
            add(f"{where}.id' is {camera.id!r}; use letters, digits, - and _")
        elif camera.id in seen:
            add(f"{where}.id' repeats camera id {camera.id!r}")
        seen.add(camera.id)
        if not camera.source.strip():
            add(f"{where}.source' is missing: name a device, URL, file or folder")
    if config.tracker.low_threshold > config.tracker.high_threshold:
        add("'tracker.low_threshold' must not exceed 'tracker.high_threshold'")
    _check_ids(config, add)
    if config.classifier.backend == "insightface" and not config.classifier.model:
        add("'classifier.model' must name genderage.onnx for backend 'insightface'")
    _check_ensemble(config.classifier, add)
    for key, names in (
        ("player.allowed_hosts", config.player.allowed_hosts),
        ("host_names", config.host_names),
    ):
        for name in names:
            if not isinstance(name, str) or host_problem(name.removeprefix(".")):
                add(f"'{key}' has {name!r}: give host names or addresses, without scheme or port")
    hosts = [
        ("mqtt.host", config.mqtt.host),
        ("player.listen", config.player.listen),
        ("serve.listen", config.serve.listen),
    ]
    if config.dashboard.listen is not None:
        hosts.append(("dashboard.listen", config.dashboard.listen))
        if config.dashboard.port is None and config.dashboard.listen != config.player.listen:
            add(
                "'dashboard.listen' differs from 'player.listen' without a "
                "'dashboard.port': give the dashboard a port of its own"
            )
    host_problems(hosts, add)
    tls = config.mqtt.tls
    if config.mqtt.enabled and tls.enabled:
        tls_file_problems(tls, config.resolve, "mqtt.tls", add)
        if tls.key_file and not tls.cert_file:
            add("'mqtt.tls.key_file' is set without 'mqtt.tls.cert_file'")


def _check_ensemble(c, add) -> None:
    if c.backend != "ensemble":
        return
    members = ("cydral", "faceapi", "faceapi-fairface", "cydral-fairface", "insightface")
    if (
        not c.members
        or any(m not in members for m in c.members)
        or len(set(c.members)) != len(c.members)
    ):
        add(
            f"'classifier.members' is {c.members!r}; list backends once each, from "
            f"{', '.join(members)}"
        )
        return
    if "insightface" in c.members and not c.model:
        add("'classifier.model' must name genderage.onnx for ensemble member 'insightface'")
    for key, weights in (("weights", c.weights), ("gender_weights", c.gender_weights)):
        if weights is not None and (
            len(weights) != len(c.members)
            or any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in weights)
            or sum(weights) <= 0
        ):
            add(
                f"'classifier.{key}' is {weights!r}; give one number >= 0 per member of "
                f"{c.members!r}, not all zero"
            )


def host_problems(hosts, add) -> None:
    """add() a line for each (key, host) whose host is not a usable name or address."""
    for key, host in hosts:
        problem = host_problem(host)
        if problem:
            add(f"'{key}' is {redact(host)!r}: {problem}")


def tls_file_problems(tls: TlsConfig, resolve, key: str, add) -> None:
    """add() a line for each of tls's files that is set and missing (resolve: the
    config's own, relative to its file's folder)."""
    for name in ("ca_file", "cert_file", "key_file"):
        file = getattr(tls, name)
        if file is not None and not resolve(file).is_file():
            add(f"'{key}.{name}' is {file!r}: no such file ({resolve(file)})")


def host_problem(host: str) -> str:
    """What is wrong with a host name or address ('' if nothing): catches the usual
    slips (a URL, a port, spaces) before they become a connection error at run time."""
    if not host.strip():
        return "give a host name or address"
    if "://" in host:
        return "give the host alone, without a scheme like mqtt://"
    try:
        ipaddress.ip_address(host)
        return ""
    except ValueError:
        pass
    if re.fullmatch(r"[^:\s]+:\d+", host):
        return "give the host alone; the port has its own key"
    if len(host) > 253 or not all(
        re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", label)
        for label in host.rstrip(".").split(".")
    ):
        return "not a host name or IP address"
    return ""


def bucket_problem(buckets) -> str:
    """What is wrong with runtime.batch_buckets, '' if nothing (runtime.GpuOptions too)."""
    if not buckets or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in buckets):
        return (
            f"'runtime.batch_buckets' is {list(buckets or [])}; give batch sizes of 1 or "
            f"more, e.g. [1, 4, 16, 64, 128]"
        )
    return ""


def _check_ids(config: Config, add) -> None:
    """Ids that end up in MQTT topics and URLs: safe characters, no repeats."""
    if not _ID.fullmatch(config.mqtt.store_id):
        add(f"'mqtt.store_id' is {config.mqtt.store_id!r}; use letters, digits, - and _")
    for key, prefix in (
        ("mqtt.topic_prefix", config.mqtt.topic_prefix),
        ("mqtt.home_assistant.prefix", config.mqtt.home_assistant.prefix),
    ):
        if not TOPIC_PREFIX.fullmatch(prefix):
            add(f"'{key}' is {prefix!r}; use letters, digits, - and _, levels separated by /")
    cameras = {c.id for c in config.cameras}
    seen = set()
    for i, display in enumerate(config.displays):
        where = f"'displays[{i}]"
        if not _ID.fullmatch(display.id):
            add(f"{where}.id' is {display.id!r}; use letters, digits, - and _")
        elif display.id in seen:
            add(f"{where}.id' repeats display id {display.id!r}")
        seen.add(display.id)
        if display.camera not in cameras:
            add(
                f"{where}.camera' is {display.camera!r}; name one of the configured "
                f"cameras ({', '.join(sorted(cameras)) or 'none'})"
            )


_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Topic levels without MQTT wildcards (+ #), empty levels or a leading/trailing /.
TOPIC_PREFIX = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _type_name(t: type) -> str:
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        list: "a list",
        dict: "a mapping",
    }.get(t, t.__name__)


def reference(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, doc) for every key, for the configuration reference (docs/reference.md)."""
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


def reference_table(cls: type = Config) -> str:
    """The markdown key table of a typed config (`edge config --reference`,
    `edge hq --reference`): key, default as JSON, meaning."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, default, doc in reference(cls):
        rows.append(f"| `{key}` | `{json.dumps(default)}` | {doc} |")
    return "\n".join(rows)
