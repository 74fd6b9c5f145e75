"""Errors that reach the operator as one clear line, with the exit status to use.

Exit statuses follow sysexits.h so that systemd's RestartPreventExitStatus=78
stops a restart loop on configuration problems that a restart cannot fix.
"""

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
