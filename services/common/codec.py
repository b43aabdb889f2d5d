"""Array codec for depth, flow, masks and frames that records dtype, shape and (H, W).

Users of the original pipeline got depth maps with width and height swapped. Here every array
artifact names its axes (a layout such as "THW" or "THWC"), so a reader states the (H, W) it
expects and a mismatch is refused with a message instead of silently transposed.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np

from services.common.errors import IntegrityError, InvalidArgumentError

MEDIA_TYPE = "application/x-gflow-array"
_MAGIC = b"GFLOWARR"
_VERSION = 1
_MAX_DIM = 2**31  # any one axis; products are taken in Python integers, which cannot overflow
_ALLOWED_DTYPES = {"uint8", "bool", "int32", "int64", "float16", "float32", "float64"}


def _hw_of(shape: tuple[int, ...], layout: str) -> tuple[int, int] | None:
    if "H" in layout and "W" in layout:
        return shape[layout.index("H")], shape[layout.index("W")]
    return None


def encode_array(array: np.ndarray, layout: str) -> bytes:
    """Serialise `array` with a header naming its axes; `layout` has one letter per axis."""
    array = np.ascontiguousarray(array)
    if len(layout) != array.ndim:
        raise InvalidArgumentError(
            "layout", f"{layout!r} names {len(layout)} axes but the array has shape {array.shape}"
        )
    if str(array.dtype) not in _ALLOWED_DTYPES:
        raise InvalidArgumentError("array", f"dtype {array.dtype} not in {sorted(_ALLOWED_DTYPES)}")
    header = {
        "version": _VERSION,
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "layout": layout,
    }
    hw = _hw_of(array.shape, layout)
    if hw is not None:
        header["height"], header["width"] = hw
    header_bytes = json.dumps(header, sort_keys=True).encode()
    return _MAGIC + struct.pack("<I", len(header_bytes)) + header_bytes + array.tobytes()


def _split(data: bytes) -> tuple[dict, bytes]:
    """(header, payload) of an encoded array; a malformed header is DATA_LOSS, never a crash."""
    if data[: len(_MAGIC)] != _MAGIC or len(data) < len(_MAGIC) + 4:
        raise IntegrityError("not a gflow array artifact (bad magic bytes)")
    (length,) = struct.unpack("<I", data[len(_MAGIC) : len(_MAGIC) + 4])
    start = len(_MAGIC) + 4
    if start + length > len(data):
        raise IntegrityError(f"array header claims {length} bytes, the artifact has {len(data)}")
    try:
        header = json.loads(data[start : start + length])
    except (ValueError, RecursionError) as exc:
        raise IntegrityError(f"array header is not valid JSON ({type(exc).__name__})") from exc
    _check_header(header)
    return header, data[start + length :]


def _check_header(header: object) -> None:
    """Types and ranges of every header field a reader relies on."""
    if not isinstance(header, dict):
        raise IntegrityError("array header is not a JSON object")
    if header.get("dtype") not in _ALLOWED_DTYPES:
        raise IntegrityError(
            f"array header dtype {header.get('dtype')!r} not in {sorted(_ALLOWED_DTYPES)}"
        )
    shape, layout = header.get("shape"), header.get("layout")
    if not isinstance(shape, list) or not all(type(n) is int and 0 <= n < _MAX_DIM for n in shape):
        raise IntegrityError(f"array header shape {shape!r} is not a list of sizes")
    if not isinstance(layout, str) or len(layout) != len(shape):
        raise IntegrityError(f"array header layout {layout!r} does not name the {shape} axes")


def read_header(data: bytes) -> dict:
    """dtype, shape, layout and (height, width) of an encoded array, without decoding it."""
    return _split(data)[0]


def decode_array(
    data: bytes,
    *,
    layout: str | None = None,
    expect_hw: tuple[int, int] | None = None,
    field: str = "array",
) -> np.ndarray:
    """Deserialise and check: layout and (H, W) must match what the caller expects."""
    header, payload = _split(data)
    shape = tuple(header["shape"])
    if layout is not None and header["layout"] != layout:
        raise InvalidArgumentError(
            field, f"artifact has layout {header['layout']} {shape}, expected {layout}"
        )
    stored_hw = (header.get("height"), header.get("width"))
    if expect_hw is not None and stored_hw != tuple(expect_hw):
        hint = " (height and width swapped?)" if stored_hw == tuple(expect_hw)[::-1] else ""
        raise InvalidArgumentError(
            field,
            f"artifact is H={stored_hw[0]} x W={stored_hw[1]} but the video is "
            f"H={expect_hw[0]} x W={expect_hw[1]}{hint}",
        )
    if _hw_of(shape, header["layout"]) != (stored_hw if "height" in header else None):
        raise IntegrityError(f"{field}: header (H, W) {stored_hw} disagrees with shape {shape}")
    dtype = np.dtype(header["dtype"])
    expected_bytes = math.prod(shape) * dtype.itemsize
    if len(payload) != expected_bytes:
        raise IntegrityError(
            f"{field}: payload has {len(payload)} bytes, shape {shape} {dtype} "
            f"needs {expected_bytes}"
        )
    return np.frombuffer(payload, dtype=dtype).reshape(shape).copy()
