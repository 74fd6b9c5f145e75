"""`edge check`: is this box set up right? One line per check, for the installer.

Every check returns its own Results, so one failure never hides the others,
and the checks run side by side: a camera or broker that only times out costs
its timeout once, not once per check. Nothing here loads the face models or
starts the service; each check asks the module that owns the thing (config,
select, modelstore, capture, mqttclient, runtime) the same question the
service would.
"""

from __future__ import annotations

import errno
import functools
import os
import queue
import socket
import ssl
import stat
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from edge import config as config_mod
from edge.catalog import load_catalog
from edge.config import CameraConfig, Config
from edge.errors import EX_CONFIG, ConfigError, ModelError, tcp_problem
from edge.inference import modelstore, runtime
from edge.outputs import hass, mqttclient
from edge.outputs.access import is_loopback, load_secret
from edge.pipeline.capture import SourceEnded, device_node, open_source, source_kind
from edge.redact import password, redact, without_credentials

# Network cameras are opened in a child process each (streamproc.py), so hung ones time
# out side by side. Counted from the start of `edge check`, so that slow imports on a
# busy box do not push it past about 5 s in all; a camera is given at least MIN_WAIT_S.
CAMERA_TIMEOUT_S = 4.0
CAMERA_MIN_WAIT_S = 2.0
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
        return [
            fail(
                "ad catalog",
                str(exc),
                f"correct what is named (the format is described at the top of {path.name})",
            )
        ]
    # Each display's camera exists: config validation has checked it already.
    displays = ", ".join(f"{d.id} (camera {d.camera})" for d in config.displays)
    return [ok("ad catalog", f"{path}: {len(catalog.ads)} ads valid; displays {displays}")]


def check_models(config: Config, fetch: str = modelstore.FIX_COMMAND) -> list[Result]:
    """Hash every manifest file (as `edge models verify` does) and the operator's own."""
    models_dir = config.resolve(config.models.dir)
    try:
        specs = modelstore.load_manifest(models_dir)
    except ModelError as exc:
        return [
            fail(
                "models",
                str(exc),
                f"set models.dir to the folder holding {modelstore.MANIFEST_NAME}",
            )
        ]
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
    classifier = [
        n
        for n in modelstore.configured_models(config)
        if n in specs and specs[n].role != "detector"
    ]
    if classifier:
        results.append(
            ok(
                "classifier provenance",
                f"{config.classifier.backend}: "
                + "; ".join(f"{n}: {modelstore.provenance(specs[n])}" for n in classifier),
            )
        )
    return results + _own_models(config)


def _own_models(config: Config) -> list[Result]:
    """Model files the operator brings for the optional backends (not in the manifest)."""
    results = []
    for key, file, used in (
        ("detector.model", config.detector.model, config.detector.backend != "centerface"),
        ("classifier.model", config.classifier.model, config.classifier.backend == "insightface"),
    ):
        if not (used and file):
            continue
        path = config.resolve(file)
        results.append(
            ok(f"model {key}", f"{path} (your own file)")
            if path.is_file()
            else fail(
                f"model {key}",
                f"{path} does not exist",
                f"copy the model file there, or correct {key}",
            )
        )
    return results


def check_cameras(config: Config, started: float | None = None) -> list[Result]:
    """One frame from every camera, all cameras at once, by CAMERA_TIMEOUT_S after
    `started` (the start of `edge check`)."""
    if not config.cameras:
        return [fail("cameras", "none configured", "add 'cameras' to the config")]
    now = time.monotonic()
    deadline = max(
        now + CAMERA_MIN_WAIT_S, (now if started is None else started) + CAMERA_TIMEOUT_S
    )
    grabs = [
        (camera, Background(functools.partial(grab_frame, camera, timeout_s=deadline - now)))
        for camera in config.cameras
    ]
    return [_camera_result(camera, grab, deadline, deadline - now) for camera, grab in grabs]


def grab_frame(camera: CameraConfig, timeout_s: float = CAMERA_TIMEOUT_S) -> tuple[int, int]:
    """Width and height of the first frame the camera delivers."""
    device = device_node(camera.source)
    # Checked first: opening a missing device makes FFmpeg print lines of its own.
    if device and not os.path.exists(device):
        raise OSError(f"{device}: no such device")
    if device and not os.access(device, os.R_OK | os.W_OK):
        raise OSError(f"{device}: permission denied")
    if source_kind(camera.source) == "stream":
        _reach(camera.source, timeout_s)
    reader = open_source(camera.source, loop=False, still_fps=camera.fps, timeout_s=timeout_s)
    try:
        image = reader.read()
    except SourceEnded:
        raise OSError(f"{redact(camera.source)}: has no frames") from None
    finally:
        reader.release()
    return image.shape[1], image.shape[0]


def _camera_result(
    camera: CameraConfig, grab: Background, deadline: float, waited_s: float
) -> Result:
    name = f"camera {camera.id}"
    try:
        width, height = grab.result(max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        return fail(
            name,
            f"{redact(camera.source)}: no frame within {waited_s:.0f} s",
            _camera_fix(camera.source),
        )
    except OSError as exc:
        return fail(name, redact(str(exc)), _camera_fix(camera.source))
    return ok(name, f"{redact(camera.source)}: {width}x{height} frame")


def _reach(url: str, timeout_s: float) -> None:
    """TCP to the URL's host first: says why it is unreachable (FFmpeg only prints it)."""
    # Split after the credentials: a raw '/' or '@' in a password fools urlsplit.
    parts = urllib.parse.urlsplit(without_credentials(url))
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    if not parts.hostname or not port:
        return  # let FFmpeg judge what it can open
    if problem := tcp_problem(parts.hostname, port, timeout_s):
        raise OSError(f"{redact(url)}: cannot reach {parts.hostname}:{port}: {problem}")


_DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}


def _camera_fix(source: str) -> str:
    kind = source_kind(source)
    if kind == "device":
        return (
            "check the camera's cable and the device name (ls /dev/video*); the service "
            "user must be in the 'video' group"
        )
    if kind == "stream":
        return (
            "check the URL, that the camera is on the network (ping it), and its user "
            "name and password"
        )
    return "check the path, and that the service user can read it"


def check_broker(config: Config) -> list[Result]:
    """The broker's connection, and who else it lets write (`broker access`)."""
    results = _check_connection(config)
    if len(results) == 1:
        results.append(
            _in_clear(config) or ok("broker access", "not checked: no connection as the service")
        )
    return results


def _in_clear(config: Config) -> Result | None:
    """A warning when the password would cross the network without TLS."""
    cfg = config.mqtt
    if mqttclient.credentials(cfg)[1] and not cfg.tls.enabled and not _on_this_box(cfg.host):
        return warn(
            "broker access",
            f"the MQTT password travels in clear to {cfg.host}, off this box: anyone on "
            f"the way can read it — fix: mqtt.tls.enabled: true (port 8883), or a broker "
            f"on this box",
        )
    return None


def _check_connection(config: Config) -> list[Result]:
    """Connect as the service would (own client id, so the service is not kicked off)."""
    cfg = config.mqtt
    if not cfg.enabled:
        return [ok("broker", "not used (mqtt.enabled is false)")]
    where = f"{cfg.host}:{cfg.port}"
    user = mqttclient.credentials(cfg)[0]
    as_user = f"as '{user}'" if user else "anonymously"
    try:
        client = mqttclient.make_client(config, f"{mqttclient.service_client_id(config)}-check")
    except (OSError, ValueError, ConfigError) as exc:  # unreadable or mismatched TLS files
        return [
            fail("broker", f"TLS set-up: {exc}", "check mqtt.tls.ca_file, cert_file and key_file")
        ]
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
        return [
            fail(
                "broker",
                f"{where} accepted the connection but sent no MQTT answer within "
                f"{BROKER_TIMEOUT_S:g} s",
                "check that this port is the broker's MQTT port and whether it expects "
                "TLS (mqtt.tls.enabled)",
            )
        ]
    finally:
        client.disconnect()
        client.loop_stop()
    if reason.is_failure:
        advice = mqttclient.explain(reason).removeprefix(f"{reason}: ")
        return [fail("broker", f"{where} refused the login {as_user}: {reason}", advice)]
    tls = " over TLS" if cfg.tls.enabled else ""
    return [ok("broker", f"connected to {where} {as_user}{tls}"), _broker_access(config, user)]


SECURE_BROKER = 'install mosquitto/edge-store.conf and its ACL (README "Securing the broker")'


def _broker_access(config: Config, user: str | None) -> Result:
    """Whether the broker checks who writes: anyone it lets in anonymously can put any
    content on the screens (within the catalog) and mark the service offline; and
    whether a password would cross the network in clear."""
    if (in_clear := _in_clear(config)) is not None:
        return in_clear
    if not user or _accepts_anonymous(config):
        return warn(
            "broker access",
            "the broker lets anonymous clients in: anyone who can reach it can publish "
            f"display content and mark this box offline — fix: {SECURE_BROKER}",
        )
    return ok("broker access", "anonymous clients are refused")


def _accepts_anonymous(config: Config) -> bool:
    """Whether the broker accepts a connection without a user name (own client id)."""
    try:
        client = mqttclient.make_client(
            config, f"{mqttclient.service_client_id(config)}-check-anonymous"
        )
    except (OSError, ValueError, ConfigError):
        return False
    client.username_pw_set(None, None)  # the same client, TLS included, without a login
    answers: queue.Queue = queue.Queue()
    client.on_connect = lambda _c, _u, _flags, reason, _props: answers.put(reason)
    try:
        client.connect(**mqttclient.connect_kwargs(config))
    except OSError:
        return False
    client.loop_start()
    try:
        return not answers.get(timeout=BROKER_TIMEOUT_S).is_failure
    except queue.Empty:
        return False
    finally:
        client.disconnect()
        client.loop_stop()


def _on_this_box(host: str) -> bool:
    """Whether every address of `host` is a loopback one."""
    try:
        addresses = {str(a[4][0]) for a in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(is_loopback(a) for a in addresses)


def check_secrets(config: Config, config_path: str | None = None) -> list[Result]:
    """Files that hold secrets (passwords in the config, edge.env beside it) must not be
    readable by every user of the box."""
    files = []
    if config_path and _holds_secret(Path(config_path)):
        files.append(Path(config_path))
    env_file = config.base_dir / "edge.env"
    if config_path and env_file.is_file():
        files.append(env_file)
    readable = [f for f in files if f.stat().st_mode & stat.S_IROTH]
    if readable:
        return [
            warn(
                "secrets",
                f"{', '.join(map(str, readable))} holds passwords and every user of this box "
                f"can read it — fix: chown root:edge and chmod 640 (tools/install.sh does)",
            )
        ]
    return [ok("secrets", f"{len(files)} file(s) with secrets, none readable by others")]


def _holds_secret(path: Path) -> bool:
    """Whether a config file has a password written in it (not a ${NAME} reference)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    if not isinstance(data, dict):
        return False
    mqtt_cfg = data["mqtt"] if isinstance(data.get("mqtt"), dict) else {}
    values = [mqtt_cfg.get("password")]
    values += [c.get("source") for c in data.get("cameras") or [] if isinstance(c, dict)]
    return any(
        isinstance(v, str)
        and "${" not in v
        and (v is values[0] or password(v) is not None or "pwd=" in v.lower())
        for v in values
        if v
    )


def _connect_problem(exc: OSError, host: str, where: str) -> tuple[str, str]:
    """(problem, fix) for a connection that failed below MQTT."""
    if isinstance(exc, socket.gaierror):
        return (
            f"unknown host '{host}'",
            "correct mqtt.host (a name DNS or /etc/hosts knows, or an address)",
        )
    if isinstance(exc, ConnectionRefusedError):
        return (
            f"{where} refused the connection: no broker listens there",
            "start the broker (systemctl status mosquitto) or correct mqtt.host/mqtt.port",
        )
    if isinstance(exc, TimeoutError):
        return (
            f"no answer from {where} within {BROKER_TIMEOUT_S:g} s",
            "check the network and firewall, and mqtt.host/mqtt.port",
        )
    if isinstance(exc, ssl.SSLError):
        return (
            f"TLS handshake with {where} failed: {exc.reason or exc}",
            "check mqtt.tls.ca_file and that this port speaks TLS",
        )
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
        return [
            fail(
                name,
                f"none of runtime.providers ({', '.join(preferred) or 'empty'}) can "
                f"run here ({skipped or 'none listed'}); the service would fall "
                f"back to cpu",
                "add cpu to runtime.providers, or install the NVIDIA driver and CUDA libraries",
            )
        ]
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
        return [
            fail(
                "state dir",
                f"{existing} is not writable ({exc.strerror})",
                "let the service user write there (chown), or set state_dir",
            )
        ]
    created = "" if existing == path else f" (created on first use, in {existing})"
    return [ok("state dir", f"{path} is writable{created}")]


def check_home_assistant(config: Config) -> list[Result]:
    """The discovery prefix and what would be announced under it (hass.py)."""
    name = "home assistant"
    ha = config.mqtt.home_assistant
    if not config.mqtt.enabled:
        return [ok(name, "not used (mqtt.enabled is false)")]
    # config validation already refuses a bad prefix; said here so the line is complete
    if not config_mod.TOPIC_PREFIX.fullmatch(ha.prefix):
        return [
            fail(
                name,
                f"discovery prefix {ha.prefix!r} is not a valid topic prefix",
                "set mqtt.home_assistant.prefix to Home Assistant's discovery prefix "
                "(homeassistant unless changed there)",
            )
        ]
    where = f"{ha.prefix}/<component>/{hass.node_id(config)}/"
    if not ha.enabled:
        return [
            ok(
                name,
                f"discovery off; configs announced earlier under {where} are removed "
                f"at the next connect",
            )
        ]
    entities = len(hass.discovery_configs(config))
    return [
        ok(
            name,
            f"discovery prefix '{ha.prefix}' valid: {entities} entities under "
            f"{where} (Home Assistant's MQTT discovery prefix must be the same)",
        )
    ]


def check_metrics(config: Config) -> list[Result]:
    """The metrics port is free (or already served by this service)."""
    name = "metrics"
    cfg = config.metrics
    if not cfg.port:
        return [ok(name, "off (metrics.port is 0)")]
    where = f"{cfg.listen}:{cfg.port}"
    exc = _bind_error(cfg.listen, cfg.port)
    if isinstance(exc, socket.gaierror):
        return [
            fail(
                name,
                f"unknown listen address '{cfg.listen}'",
                "set metrics.listen to an address of this box, or 0.0.0.0 for all",
            )
        ]
    if exc is not None:
        if exc.errno == errno.EADDRINUSE:
            if _serves_edge_metrics(cfg.listen, cfg.port):
                return [ok(name, f"http://{where}/metrics is served by a running edge service")]
            return [
                fail(
                    name,
                    f"port {where} is in use by another program",
                    "set metrics.port to a free port (ss -ltnp shows who holds it), "
                    "or 0 to turn metrics off",
                )
            ]
        return [
            fail(
                name,
                f"cannot listen on {where}: {exc.strerror or exc}",
                "set metrics.listen to an address of this box, or 0.0.0.0 for all",
            )
        ]
    return [ok(name, f"port {where} is free for http://{where}/metrics")]


def _serves_edge_metrics(host: str, port: int) -> bool:
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    host = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2) as answer:
            return b"edge_build_info" in answer.read(1 << 20)
    except (OSError, ValueError):
        return False


def _bind_error(host: str, port: int) -> OSError | None:
    """Why a server could not listen on host:port (None: it could). Bound and released
    at once, as our servers bind (address reuse on), so a port in TIME_WAIT is free."""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:  # socket.gaierror included: an unknown host name
        return exc
    return None


def check_player(config: Config) -> list[Result]:
    """Can the display player listen where configured?"""
    cfg = config.player
    if not (cfg.port and config.displays and config.mqtt.enabled):
        return [ok("player", "not used (needs player.port, displays and mqtt.enabled)")]
    where = f"{cfg.listen}:{cfg.port}"
    exc = _bind_error(cfg.listen, cfg.port)
    if isinstance(exc, socket.gaierror):
        return [
            fail(
                "player",
                f"player.listen '{cfg.listen}' is not a known host name",
                "set player.listen to 127.0.0.1, 0.0.0.0 or an address of this box",
            )
        ]
    if exc is not None:
        if exc.errno == errno.EADDRINUSE:
            return [
                warn(
                    "player",
                    f"{where} is in use: by the running service (fine), or "
                    f"by another program (then the player cannot start)",
                )
            ]
        if exc.errno == errno.EADDRNOTAVAIL:
            return [
                fail(
                    "player",
                    f"{cfg.listen} is not an address of this box",
                    "set player.listen to 127.0.0.1, 0.0.0.0 or one of this box's "
                    "addresses (ip addr)",
                )
            ]
        if exc.errno == errno.EACCES:
            return [
                fail(
                    "player",
                    f"cannot listen on {where}: ports below 1024 need privileges",
                    "set player.port to 1024 or more, e.g. 8080",
                )
            ]
        return [
            fail(
                "player",
                f"cannot listen on {where}: {exc.strerror or exc}",
                "check player.listen and player.port",
            )
        ]
    return [ok("player", f"can listen on {where}")]


def check_dashboard(config: Config) -> list[Result]:
    """Where the dashboard listens, and whether it has the key it needs off this box."""
    from edge.outputs.player_server import DASHBOARD_KEY_CREDENTIAL, DASHBOARD_KEY_ENV

    dash = config.dashboard
    if not dash.enabled or not config.player.port:
        return [ok("dashboard", "off")]
    listen = dash.listen or config.player.listen
    where = f"{listen}:{dash.port or config.player.port}"
    if is_loopback(listen):
        return [ok("dashboard", f"on {where}, this box only")]
    if load_secret(DASHBOARD_KEY_ENV, DASHBOARD_KEY_CREDENTIAL):
        return [ok("dashboard", f"on {where}, off this box, behind its key")]
    return [
        warn(
            "dashboard",
            f"listens on {where}, off this box, and no key is set: it answers 403 — fix: "
            f"set {DASHBOARD_KEY_ENV} in edge.env (or the credential "
            f"{DASHBOARD_KEY_CREDENTIAL}), or keep it on the box: dashboard.listen: "
            f"127.0.0.1 with a dashboard.port of its own",
        )
    ]


# -- running and printing ----------------------------------------------------------


class Background:
    """fn() on a daemon thread: a camera or broker that hangs cannot hold up the exit
    (a ThreadPoolExecutor joins its threads at exit)."""

    unfinished: set[Background] = set()
    _lock = threading.Lock()

    def __init__(self, fn: Callable):
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        with Background._lock:
            Background.unfinished.add(self)
        threading.Thread(target=self._run, args=(fn,), daemon=True).start()

    def _run(self, fn: Callable) -> None:
        try:
            self._value = fn()
        except BaseException as exc:  # handed to the caller of result()
            self._error = exc
        finally:
            self._done.set()
            with Background._lock:
                Background.unfinished.discard(self)

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
            yield fail(
                name,
                f"did not finish within {CHECK_TIMEOUT_S:g} s",
                "run the check again; report it if it keeps hanging",
            )
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
        emit(
            fail(
                "config",
                str(exc),
                "correct the config where named, or give the right "
                "--config path (`edge config --reference` lists every "
                "key)",
            )
        )
        print(summary(results, time.monotonic() - started))
        return EX_CONFIG
    emit(ok("config", f"{config_path or '(defaults)'} is valid"))
    fetch = f"edge --config {config_path} models fetch" if config_path else modelstore.FIX_COMMAND
    checks: list[Check] = [
        check_catalog,
        functools.partial(check_models, fetch=fetch),
        functools.partial(check_cameras, started=started),
        check_broker,
        check_home_assistant,
        check_execution_provider,
        check_state_dir,
        check_player,
        check_dashboard,
        check_metrics,
        functools.partial(check_secrets, config_path=config_path),
    ]
    for result in run_checks(config, checks):
        emit(result)
    print(summary(results, time.monotonic() - started))
    status = 1 if any(r.status == "FAIL" for r in results) else 0
    if Background.unfinished:
        # A check still blocked in native code (a camera driver, a C++ library's thread)
        # cannot be torn down at interpreter exit: C++ aborts with SIGABRT ("terminate
        # called without an active exception"). The results are out; end here, with ours.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status
