"""Sample inputs that installed packages ship, for the demo and tests (no camera needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def group_photo() -> Path:
    """insightface's t1.jpg: six adults around a table (3 women, 3 men)."""
    spec = importlib.util.find_spec("insightface")  # locate without importing it (slow, chatty)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("insightface is not installed; run 'make setup'")
    return Path(spec.submodule_search_locations[0]) / "data" / "images" / "t1.jpg"
