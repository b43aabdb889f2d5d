"""Reading back the binary PLY files services/fit/export.py writes, for the integration tests."""

from __future__ import annotations

import re

import numpy as np

from services.fit.export import PLY_PROPERTIES

HEADER_END = b"end_header\n"


def ply_gaussians(data: bytes) -> np.ndarray:
    """float32 [N, len(PLY_PROPERTIES)] table; N must be the header's vertex count and the body
    exactly N rows."""
    header, body = data.split(HEADER_END, 1)
    count = int(re.search(rb"element vertex (\d+)", header)[1])
    assert len(body) == count * len(PLY_PROPERTIES) * 4, (len(body), count)
    return np.frombuffer(body, "<f4").reshape(count, len(PLY_PROPERTIES))
