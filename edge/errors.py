"""Errors that reach the operator as one clear line, with the exit status to use.

Exit statuses follow sysexits.h so that systemd's RestartPreventExitStatus=78
stops a restart loop on configuration problems that a restart cannot fix.
"""

import socket

EX_USAGE = 64  # a command-line argument names something that does not exist
EX_DATAERR = 65
EX_NOINPUT = 66  # an input file is missing or cannot be read
EX_SOFTWARE = 70
EX_CONFIG = 78


class EdgeError(Exception):
    """An error with a message meant for a person, and the exit status to use."""

    exit_status = EX_SOFTWARE


class ConfigError(EdgeError):
    """Invalid configuration: names the file and the key."""

    exit_status = EX_CONFIG


class ModelError(EdgeError):
    """A model file is missing, corrupt or unusable; a restart will not fix it."""

    exit_status = EX_CONFIG


class InputError(EdgeError):
    """An input file (image, label set) cannot be read or is malformed."""

    exit_status = EX_DATAERR


def tcp_problem(host: str, port: int, timeout_s: float) -> str | None:
    """Why a TCP connection to host:port fails, in the system's words (connection refused,
    name not known, ...) or "no answer within N s"; None when it connects. The publisher
    (a broker it cannot reach) and `edge check` (a camera URL) say it the same way."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except TimeoutError:
        return f"no answer within {f'{timeout_s:.1f}'.removesuffix('.0')} s"
    except OSError as exc:
        return exc.strerror or str(exc)
    return None
