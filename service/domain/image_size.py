"""An inline image's pixel size, read from its header, and the prompt tokens it can cost.

Providers price an input image by its size, and not all of them scale a large image down:
Gemini cuts it into 768x768 tiles of 258 tokens each, so a 16,000-pixel square PNG of a few
kilobytes is ~110,000 prompt tokens. The reservation must see that before the call; the header
says it without decoding a pixel. Only the formats the gateway accepts are read (PNG, JPEG, GIF,
WebP); each read is bounded, so a crafted file costs no more than a small one.
"""

from __future__ import annotations

import math

IMAGE_INPUT_TOKENS = 3_000
"""An input image's tokens when its size keeps it small for every provider: providers that
scale images down bound them to a fixed budget (OpenAI's high detail ~1,100-2,500 tokens with
its multipliers, Anthropic ~1,600)."""
TILE_PIXELS = 768
TILE_TOKENS = 258
"""Gemini's tiles: an image above 384 pixels on a side is cut into 768x768 tiles of 258 tokens
(ai.google.dev, "Understand and count tokens"); it is not scaled down first."""
_JPEG_SEGMENTS = 512
"""Segments read looking for a JPEG's frame header; it comes after the metadata segments
(EXIF, ICC profile, thumbnails), a handful in real files."""
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
"""SOF0-SOF15 without DHT, JPG and DAC, which share the range but carry no frame header."""


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, GIF or WebP header; None when unreadable (a size
    of zero included: no provider takes such an image, and it bounds nothing)."""
    size = _header_dimensions(data)
    return size if size is not None and min(size) > 0 else None


def _header_dimensions(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_dimensions(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg_dimensions(data)
    return None


def _webp_dimensions(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width = int.from_bytes(data[26:28], "little") & 0x3FFF
        height = int.from_bytes(data[28:30], "little") & 0x3FFF
        return width, height
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    at = 2
    for _ in range(_JPEG_SEGMENTS):
        if at + 4 > len(data) or data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # a fill byte before the marker
            at += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            at += 2
            continue
        if marker in _JPEG_FRAME_MARKERS:
            if at + 9 > len(data):
                return None
            height = int.from_bytes(data[at + 5 : at + 7], "big")
            width = int.from_bytes(data[at + 7 : at + 9], "big")
            return width, height
        if marker in (0xD9, 0xDA):  # end of image, or the scan: no frame header before it
            return None
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return None


def image_tokens_bound(width: int, height: int) -> int:
    """The most prompt tokens an image of this size costs on any provider."""
    if width <= TILE_PIXELS // 2 and height <= TILE_PIXELS // 2:
        return IMAGE_INPUT_TOKENS
    tiles = math.ceil(width / TILE_PIXELS) * math.ceil(height / TILE_PIXELS)
    return max(IMAGE_INPUT_TOKENS, tiles * TILE_TOKENS)
