"""Showing an example the way a person reads it: image-like rows as a PNG (a tiny
dependency-free encoder), tabular rows as ``(name, value)`` pairs."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Sequence

import numpy as np

__all__ = ["image_png", "png_data_uri", "table_rows"]


def _chunk(tag: bytes, data: bytes) -> bytes:
    body = tag + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def image_png(features: Sequence[float], shape: tuple[int, int], *, scale: int = 20) -> bytes:
    """An 8-bit greyscale PNG of one image row: dark ink on white, each pixel ``scale`` wide.

    Values are min-max scaled per image (digits 0..1 -> white..black).
    """
    h, w = int(shape[0]), int(shape[1])
    arr = np.asarray(features, dtype=float).reshape(h, w)
    lo, hi = float(arr.min()), float(arr.max())
    norm = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    pixels = (255 - np.round(norm * 255)).astype(np.uint8)
    big = np.kron(pixels, np.ones((scale, scale), np.uint8))
    raw = b"".join(b"\x00" + row.tobytes() for row in big)  # filter type 0 per scanline
    header = struct.pack(">IIBBBBB", big.shape[1], big.shape[0], 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )


def png_data_uri(features: Sequence[float], shape: tuple[int, int], *, scale: int = 20) -> str:
    """``data:image/png;base64,...`` of :func:`image_png` (inline in HTML or Label Studio)."""
    return (
        "data:image/png;base64,"
        + base64.b64encode(image_png(features, shape, scale=scale)).decode()
    )


def table_rows(
    features: Sequence[float], feature_names: Sequence[str] | None
) -> list[tuple[str, float]]:
    """``(column name, value)`` pairs of a tabular row (``f0, f1, ...`` without names)."""
    names = list(feature_names) if feature_names else [f"f{i}" for i in range(len(features))]
    return [(str(n), float(v)) for n, v in zip(names, features, strict=False)]
