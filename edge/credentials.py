"""Secrets from the environment or systemd's credentials, never from config.yaml.

Below both of its users: config.py resolves `${NAME}` references with it, and the web
servers' access checks (outputs/access.py) read their keys with it.
"""

from __future__ import annotations

import os
from pathlib import Path


def load_secret(env: str, credential: str | None = None) -> str | None:
    """The secret in environment variable `env`, else in the file `credential` of
    $CREDENTIALS_DIRECTORY (systemd's LoadCredential=); None when neither has one.
    Surrounding whitespace (a file's trailing newline) is not part of it."""
    value = os.environ.get(env, "").strip()
    if value:
        return value
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    if credential and folder:
        try:
            value = (Path(folder) / credential).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return value or None
    return None
