"""Typed configuration: one dataclass per section, unknown keys rejected.

Every key, its default and its meaning is documented here once (the `doc`
metadata), and README's configuration reference is generated from it with
`edge config --reference`. Loading checks types, choices and ranges and raises
ConfigError naming the file and the dotted key, so `edge run` can exit 78.
"""

from __future__ import annotations

import dataclasses
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
    backend: str = opt("cydral", "Age/gender model: cydral (default, CC0, dlib-models age and "
                       "gender networks) or insightface (a genderage.onnx you provide; the "
                       "InsightFace packs are licensed for non-commercial use only).",
                       choices=("cydral", "insightface"))
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


@dataclass
class RuntimeConfig:
    providers: list = opt(["cuda", "cpu"], "ONNX Runtime execution providers in order of "
                          "preference (tensorrt, cuda, cpu). GPU providers are skipped, with "
                          "one log line, where no GPU is present.")
    threads: int = opt(0, "CPU threads per inference session; 0 lets ONNX Runtime decide.",
                       min=0, max=256)


@dataclass
class Config:
    models: ModelsConfig = section(ModelsConfig, "Model files.")
    detector: DetectorConfig = section(DetectorConfig, "Face detection.")
    classifier: ClassifierConfig = section(ClassifierConfig, "Age and gender classification.")
    runtime: RuntimeConfig = section(RuntimeConfig, "Inference runtime.")
    log_level: str = opt("info", "Logging level.", choices=("debug", "info", "warning", "error"))

    # Where the config came from; relative paths resolve against its folder.
    base_dir: Path = field(default=PROJECT_ROOT, repr=False, metadata={"internal": True})

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)


def load(path: str | Path | None) -> Config:
    """Load and validate a config file; None gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    config = build(Config, data, str(path), "")
    config.base_dir = path.resolve().parent
    _cross_checks(config, str(path))
    return config


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
    if config.classifier.child_below >= config.classifier.old_from:
        raise ConfigError(f"{file}: 'classifier.child_below' ({config.classifier.child_below:g}) "
                          f"must be below 'classifier.old_from' ({config.classifier.old_from:g})")
    if config.detector.backend != "centerface" and not config.detector.model:
        raise ConfigError(f"{file}: 'detector.model' must name the model file for backend "
                          f"'{config.detector.backend}'")
    if config.classifier.backend == "insightface" and not config.classifier.model:
        raise ConfigError(f"{file}: 'classifier.model' must name genderage.onnx for backend "
                          f"'insightface'")


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
        else:
            rows.append((key, getattr(defaults, f.name), f.metadata["doc"]))
    return rows
