"""`edge check`: is this box set up right? One line per check, for the installer.

Every check returns its own Results, so one failure never hides the others,
and the checks run side by side: a camera or broker that only times out costs
its timeout once, not once per check. Nothing here loads the face models or
starts the service; each check asks the module that owns the thing (config,
select, modelstore, capture, mqttclient, runtime) the same question the
service would.
"""

from __future__ import annotations

import functools
import os
import queue
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from edge import config as config_mod
from edge import modelstore, mqttclient, runtime
from edge.capture import SourceEnded, open_source, redact
from edge.config import CameraConfig, Config
from edge.errors import EX_CONFIG, ConfigError, ModelError
from edge.select import load_catalog

CAMERA_TIMEOUT_S = 5.0
BROKER_TIMEOUT_S = 5.0
CHECK_TIMEOUT_S = 30.0  # a check that hangs anyway is reported, not waited for

Status = Literal["OK", "WARN", "FAIL"]


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<6}{self.name}: {self.detail}"
        return f"{text} — fix: {self.fix}" if self.fix else text


def ok(name: str, detail: str) -> Result:
    return Result(name, "OK", detail)


def warn(name: str, detail: str) -> Result:
    return Result(name, "WARN", detail)


def fail(name: str, detail: str, fix: str) -> Result:
    return Result(name, "FAIL", detail, fix)


Check = Callable[[Config], list[Result]]


# -- the checks --------------------------------------------------------------------


def check_catalog(config: Config) -> list[Result]:
    if not config.displays:
        return [ok("ad catalog", "not used (no displays configured)")]
    path = config.resolve(config.selector.catalog)
    try:
        catalog = load_catalog(path)
    except ConfigError as exc:  # names the catalog, every ad and field at fault
        return [fail("ad catalog", str(exc), f"correct what is named (the format is described "
                                             f"at the top of {path.name})")]
    # Each display's camera exists: config validation has checked it already.
    displays = ", ".join(f"{d.id} (camera {d.camera})" for d in config.displays)
    return [ok("ad catalog", f"{path}: {len(catalog.ads)} ads valid; displays {displays}")]


def check_models(config: Config, fetch: str = modelstore.FIX_COMMAND) -> list[Result]:
    """Hash every manifest file (as `edge models verify` does) and the operator's own."""
    models_dir = config.resolve(config.models.dir)
    try:
        specs = modelstore.load_manifest(models_dir)
    except ModelError as exc:
        return [fail("models", str(exc), f"set models.dir to the folder holding "
                                         f"{modelstore.MANIFEST_NAME}")]
    results = []
    for spec in specs.values():
        try:
            path = modelstore.verify(spec, models_dir)
        except ModelError as exc:
            # The message ends with modelstore's own advice; the fix column says it instead.
            problem = str(exc).partition(f"; run '{modelstore.FIX_COMMAND}'")[0]
            results.append(fail(f"model {spec.name}", problem, f"run '{fetch}'"))
        else:
            results.append(ok(f"model {spec.name}", f"{path} (sha256 ok)"))
    classifier = [n for n in modelstore.configured_models(config) if n in specs
                  and specs[n].role != "detector"]
    if classifier:
        results.append(ok("classifier provenance", f"{config.classifier.backend}: " + "; ".join(
            f"{n}: {modelstore.provenance(specs[n])}" for n in classifier)))
    return results + _own_models(config)


def _own_models(config: Config) -> list[Result]:
    """Model files the operator brings for the optional backends (not in the manifest)."""
    results = []
    for key, file, used in (
            ("detector.model", config.detector.model, config.detector.backend != "centerface"),
            ("classifier.model", config.classifier.model,
             config.classifier.backend == "insightface")):
        if not (used and file):
            continue
        path = config.resolve(file)
        results.append(ok(f"model {key}", f"{path} (your own file)") if path.is_file() else
                       fail(f"model {key}", f"{path} does not exist",
                            f"copy the model file there, or correct {key}"))
    return results


def check_cameras(config: Config) -> list[Result]:
    """One frame from every camera, all cameras at once, CAMERA_TIMEOUT_S in all."""
    if not config.cameras:
        return [fail("cameras", "none configured", "add 'cameras' to the config")]
    grabs = [(camera, Background(functools.partial(grab_frame, camera)))
             for camera in config.cameras]
    deadline = time.monotonic() + CAMERA_TIMEOUT_S
    return [_camera_result(camera, grab, deadline) for camera, grab in grabs]


def grab_frame(camera: CameraConfig) -> tuple[int, int]:
    """Width and height of the first frame the camera delivers."""
    device = _device(camera.source)
    # Checked first: opening a missing device makes FFmpeg print lines of its own.
    if device and not os.path.exists(device):
        raise OSError(f"{device}: no such device")
    if device and not os.access(device, os.R_OK | os.W_OK):
        raise OSError(f"{device}: permission denied")
    if "://" in camera.source:
        _reach(camera.source)
    reader = open_source(camera.source, loop=False, still_fps=camera.fps,
                         timeout_s=CAMERA_TIMEOUT_S)
    try:
        image = reader.read()
    except SourceEnded:
        raise OSError(f"{camera.source}: has no frames") from None
    finally:
        reader.release()
    return image.shape[1], image.shape[0]


def _camera_result(camera: CameraConfig, grab: "Background", deadline: float) -> Result:
    name = f"camera {camera.id}"
    try:
        width, height = grab.result(max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        return fail(name, f"{redact(camera.source)}: no frame within {CAMERA_TIMEOUT_S:g} s",
                    _camera_fix(camera.source))
    except OSError as exc:
        return fail(name, redact(str(exc)), _camera_fix(camera.source))
    return ok(name, f"{redact(camera.source)}: {width}x{height} frame")


def _reach(url: str) -> None:
    """TCP to the URL's host first: says why it is unreachable (FFmpeg only prints it)."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    if not parts.hostname or not port:
        return  # let FFmpeg judge what it can open
    try:
        socket.create_connection((parts.hostname, port), timeout=CAMERA_TIMEOUT_S).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise OSError(f"{redact(url)}: cannot reach {parts.hostname}:{port}: {reason}") from None


_DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}


def _device(source: str) -> str | None:
    """The V4L2 device node a source names, if it names one."""
    if source.isdigit():
        return f"/dev/video{source}"
    return source if source.startswith("/dev/") else None


def _camera_fix(source: str) -> str:
    if _device(source):
        return ("check the camera's cable and the device name (ls /dev/video*); the service "
                "user must be in the 'video' group")
    if "://" in source:
        return ("check the URL, that the camera is on the network (ping it), and its user "
                "name and password")
    return "check the path, and that the service user can read it"


def check_broker(config: Config) -> list[Result]:
    """Connect as the service would (own client id, so the service is not kicked off)."""
    cfg = config.mqtt
    if not cfg.enabled:
        return [ok("broker", "not used (mqtt.enabled is false)")]
    where = f"{cfg.host}:{cfg.port}"
    user = mqttclient.credentials(cfg)[0]
    as_user = f"as '{user}'" if user else "anonymously"
    try:
        client = mqttclient.make_client(config, f"{mqttclient.service_client_id(config)}-check")
    except (OSError, ValueError) as exc:  # unreadable or mismatched TLS files
        return [fail("broker", f"TLS set-up: {exc}",
                     "check mqtt.tls.ca_file, cert_file and key_file")]
    answers: queue.Queue = queue.Queue()
    client.on_connect = lambda _c, _u, _flags, reason, _props: answers.put(reason)
    try:
        client.connect(**mqttclient.connect_kwargs(config))  # TCP and TLS, 5 s timeout
    except OSError as exc:
        return [fail("broker", *_connect_problem(exc, cfg.host, where))]
    client.loop_start()
    try:
        reason = answers.get(timeout=BROKER_TIMEOUT_S)
    except queue.Empty:
        return [fail("broker", f"{where} accepted the connection but sent no MQTT answer within "
                               f"{BROKER_TIMEOUT_S:g} s",
                     "check that this port is the broker's MQTT port and whether it expects "
                     "TLS (mqtt.tls.enabled)")]
    finally:
        client.disconnect()
        client.loop_stop()
    if reason.is_failure:
        advice = mqttclient.explain(reason).removeprefix(f"{reason}: ")
        return [fail("broker", f"{where} refused the login {as_user}: {reason}", advice)]
    tls = " over TLS" if cfg.tls.enabled else ""
    return [ok("broker", f"connected to {where} {as_user}{tls}")]


def _connect_problem(exc: OSError, host: str, where: str) -> tuple[str, str]:
    """(problem, fix) for a connection that failed below MQTT."""
    if isinstance(exc, socket.gaierror):
        return (f"unknown host '{host}'",
                "correct mqtt.host (a name DNS or /etc/hosts knows, or an address)")
    if isinstance(exc, ConnectionRefusedError):
        return (f"{where} refused the connection: no broker listens there",
                "start the broker (systemctl status mosquitto) or correct mqtt.host/mqtt.port")
    if isinstance(exc, TimeoutError):
        return (f"no answer from {where} within {BROKER_TIMEOUT_S:g} s",
                "check the network and firewall, and mqtt.host/mqtt.port")
    if isinstance(exc, ssl.SSLError):
        return (f"TLS handshake with {where} failed: {exc.reason or exc}",
                "check mqtt.tls.ca_file and that this port speaks TLS")
    return f"{where}: {exc.strerror or exc}", "check mqtt.host and mqtt.port"


def check_execution_provider(config: Config) -> list[Result]:
    """The provider the service's sessions will run on: the first configured one that
    runtime finds usable (the same test choose_providers applies), without a session."""
    name = "execution provider"
    preferred = config.runtime.providers
    problems = {p: runtime.unusable(p) for p in preferred}
    usable = [p for p in preferred if not problems[p]]
    skipped = "; ".join(f"{p}: {why}" for p, why in problems.items() if why)
    if not usable:
        return [fail(name, f"none of runtime.providers ({', '.join(preferred) or 'empty'}) can "
                           f"run here ({skipped or 'none listed'}); the service would fall "
                           f"back to cpu", "add cpu to runtime.providers, or install the "
                                           "NVIDIA driver and CUDA libraries")]
    if usable[0] == preferred[0]:
        return [ok(name, usable[0])]
    gpus, why = runtime.gpu_probe()
    if usable[0] == "cpu" and gpus == 0:
        return [warn(name, f"no GPU: running on CPU ({why})")]
    return [warn(name, f"running on {usable[0]} ({skipped})")]


def check_state_dir(config: Config) -> list[Result]:
    """The MQTT outbox's folder; not created here (a root-owned folder would lock the
    service user out), so the nearest existing folder is tried."""
    if not config.mqtt.enabled:
        return []
    path = config.state_path()
    existing = next(p for p in (path, *path.parents) if p.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return [fail("state dir", f"{existing} is not writable ({exc.strerror})",
                     "let the service user write there (chown), or set state_dir")]
    created = "" if existing == path else f" (created on first use, in {existing})"
    return [ok("state dir", f"{path} is writable{created}")]


# -- running and printing ----------------------------------------------------------


class Background:
    """fn() on a daemon thread: a camera or broker that hangs cannot hold up the exit
    (a ThreadPoolExecutor joins its threads at exit)."""

    def __init__(self, fn: Callable):
        self._done = threading.Event()
        self._value = self._error = None
        threading.Thread(target=self._run, args=(fn,), daemon=True).start()

    def _run(self, fn: Callable) -> None:
        try:
            self._value = fn()
        except BaseException as exc:  # handed to the caller of result()
            self._error = exc
        finally:
            self._done.set()

    def result(self, timeout: float):
        if not self._done.wait(timeout):
            raise TimeoutError()
        if self._error is not None:
            raise self._error
        return self._value


def run_checks(config: Config, checks: list[Check]) -> Iterator[Result]:
    """Run all checks at once; yield their results in the order of `checks`."""
    jobs = [(check, Background(functools.partial(check, config))) for check in checks]
    for check, job in jobs:
        name = getattr(check, "func", check).__name__.removeprefix("check_").replace("_", " ")
        try:
            yield from job.result(CHECK_TIMEOUT_S)
        except TimeoutError:
            yield fail(name, f"did not finish within {CHECK_TIMEOUT_S:g} s",
                       "run the check again; report it if it keeps hanging")
        except Exception as exc:  # a bug in one check must not hide the others
            yield fail(name, f"the check itself failed: {exc!r}", "report this as a bug")


def summary(results: list[Result], seconds: float) -> str:
    counts = {s: sum(r.status == s for r in results) for s in ("OK", "WARN", "FAIL")}
    n = f"{len(results)} check{'s' if len(results) != 1 else ''}"
    if counts["OK"] == len(results):
        return f"{n} OK in {seconds:.1f} s"
    return f"{n} in {seconds:.1f} s: " + ", ".join(f"{c} {s}" for s, c in counts.items() if c)


def main(config_path: str | None, started: float | None = None) -> int:
    """Print one line per check and a summary; 0 when nothing failed, 1 when something
    did, 78 when the config itself is invalid (nothing else can be checked)."""
    started = time.monotonic() if started is None else started
    results: list[Result] = []

    def emit(result: Result) -> None:
        results.append(result)
        print(result.line(), flush=True)  # line by line: the installer watches it come

    try:
        config = config_mod.load(config_path)
    except ConfigError as exc:
        emit(fail("config", str(exc), "correct the config where named, or give the right "
                                      "--config path (`edge config --reference` lists every "
                                      "key)"))
        print(summary(results, time.monotonic() - started))
        return EX_CONFIG
    emit(ok("config", f"{config_path or '(defaults)'} is valid"))
    fetch = f"edge --config {config_path} models fetch" if config_path \
        else modelstore.FIX_COMMAND
    checks: list[Check] = [check_catalog, functools.partial(check_models, fetch=fetch),
                           check_cameras, check_broker, check_execution_provider,
                           check_state_dir]
    for result in run_checks(config, checks):
        emit(result)
    print(summary(results, time.monotonic() - started))
    return 1 if any(r.status == "FAIL" for r in results) else 0
