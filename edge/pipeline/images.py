"""Reading still images safely: `edge analyze` and image cameras (a still photo, a folder)
share one decoder, so they accept and reject the same files.

An image file is small on disk and may be huge in memory: a 50 kB PNG can declare
20000 x 20000 pixels (1.2 GB decoded), a 12 kB one 1 x 20000 (harmless to decode, but
a detector canvas thousands of times the usual size). So the size in the file's
header is checked before anything is decoded, and OpenCV's own decoders are capped too
(OPENCV_IO_MAX_IMAGE_PIXELS, set in edge/__init__.py before cv2 is imported) for
formats whose header is not read here. A truncated JPEG is rejected rather than
decoded half grey: cv2.imread would accept it with a warning per read, cv2.imdecode
would not, and either way the picture is not the one taken.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from edge.errors import InputError

MAX_PIXELS = 64_000_000  # 64 megapixels: above any phone or camera still (8K is 33 MP)
MAX_ASPECT = 20.0  # longer side / shorter side; beyond it no face fits anyway
MAX_FILE_BYTES = 256 * 1024 * 1024


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, BMP or WebP header; None for other formats."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        kind = data[12:16]
        if kind == b"VP8X":
            return (
                int.from_bytes(data[24:27], "little") + 1,
                int.from_bytes(data[27:30], "little") + 1,
            )
        if kind == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if kind == b"VP8 ":
            width, height = struct.unpack("<HH", data[26:30])
            return width & 0x3FFF, height & 0x3FFF
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The frame size from a JPEG's SOF marker (walking the marker segments)."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None


def jpeg_truncated(data: bytes) -> bool:
    """True for a JPEG whose data stops before its end-of-image marker (a partial
    upload or copy). libjpeg decodes such a file with a grey bottom and prints
    "Premature end of JPEG file" to stderr on every decode, so it is caught here."""
    if data[:2] != b"\xff\xd8":
        return False
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return False  # not a marker where one belongs: corrupt, the decoder judges
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if marker == 0xDA:  # start of scan: entropy-coded data, where 0xFFD9 can only be EOI
            return data.find(b"\xff\xd9", i + 2 + length) < 0
        i += 2 + length
    return True  # the headers themselves are cut off


class ImageError(InputError):
    """An image that cannot be analysed; `code` says why in a word (the photo check API
    answers with it: edge/photo_server.py)."""

    def __init__(self, message: str, code: str = "not_an_image"):
        super().__init__(message)
        self.code = code


def check_size(width: int, height: int, shown: str) -> None:
    """ImageError naming the file when an image is too large or too thin to analyse."""
    if width <= 0 or height <= 0:
        raise ImageError(f"{shown}: image declares {width}x{height} pixels")
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{shown}: image is {width}x{height} pixels, more than the "
            f"{MAX_PIXELS / 1e6:g} megapixels allowed; scale it down",
            "image_too_large",
        )
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise ImageError(
            f"{shown}: image is {width}x{height} pixels, too narrow to "
            f"analyse (sides more than {MAX_ASPECT:g}:1); crop it",
            "image_too_narrow",
        )


def read_image(path: str | Path, shown: str | None = None) -> np.ndarray:
    """BGR image, or InputError naming the file (`shown`, default the path) and what is
    wrong with it. The same rules for `edge analyze` and for image cameras."""
    shown = shown or str(path)
    path = Path(path)
    if not path.exists():
        raise InputError(f"{shown}: no such file")
    if path.is_dir():
        raise InputError(f"{shown}: is a folder, not an image")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InputError(f"{shown}: file is larger than {MAX_FILE_BYTES >> 20} MB")
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{shown}: cannot read: {exc.strerror or exc}") from None
    return decode_image(data, shown)


def check_header(data: bytes, shown: str) -> tuple[int, int] | None:
    """What can be judged before decoding: the size the header declares (None for a
    format whose header is not read here), a damaged PNG header, an empty or truncated
    file. ImageError naming `shown` otherwise."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] != b"IHDR":
        raise ImageError(f"{shown}: not a readable image (PNG header damaged)")
    size = header_size(data)
    if size is not None:
        check_size(*size, shown)
    if not data:
        raise ImageError(f"{shown}: empty file (0 bytes)", "empty_image")
    if jpeg_truncated(data):
        raise ImageError(
            f"{shown}: truncated JPEG (no end-of-image marker): the file is incomplete",
            "truncated_image",
        )
    return size


def decode_image(data: bytes, shown: str) -> np.ndarray:
    """BGR image from a file's bytes, in memory, or ImageError naming `shown`: the checks
    of check_header first, then the decoder."""
    check_header(data, shown)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # OpenCV's own pixel cap, for formats not checked above
        raise ImageError(
            f"{shown}: image is larger than {MAX_PIXELS / 1e6:g} megapixels, "
            f"or its header is damaged",
            "image_too_large",
        ) from None
    if image is None:
        raise ImageError(f"{shown}: not a readable image (JPEG, PNG, BMP, WebP, TIFF)")
    check_size(image.shape[1], image.shape[0], shown)
    return image
