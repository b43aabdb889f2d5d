"""Array codec: dtype, shape and (H, W) travel with the bytes and are checked on read."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.codec import decode_array, encode_array, read_header
from services.common.errors import IntegrityError, InvalidArgumentError


def test_round_trip_keeps_dtype_shape_and_values():
    flow_thw2 = np.arange(2 * 3 * 5 * 2, dtype=np.float32).reshape(2, 3, 5, 2)
    data = encode_array(flow_thw2, "THWC")
    header = read_header(data)
    assert (header["height"], header["width"], header["dtype"]) == (3, 5, "float32")
    out = decode_array(data, layout="THWC", expect_hw=(3, 5))
    assert out.dtype == np.float32 and out.shape == (2, 3, 5, 2)
    np.testing.assert_array_equal(out, flow_thw2)


def test_swapped_height_and_width_is_refused_with_a_hint():
    data = encode_array(np.zeros((4, 6), np.float32), "HW")
    with pytest.raises(InvalidArgumentError, match=r"depth: .*H=4 x W=6.*swapped"):
        decode_array(data, expect_hw=(6, 4), field="depth")


def test_wrong_layout_and_truncated_payload_are_refused():
    data = encode_array(np.ones((2, 4, 6), np.bool_), "THW")
    with pytest.raises(InvalidArgumentError, match="layout THW"):
        decode_array(data, layout="THWC")
    with pytest.raises(IntegrityError, match="payload has"):
        decode_array(data[:-1])
    with pytest.raises(IntegrityError, match="magic"):
        decode_array(b"not an array")


def test_layout_must_match_ndim_and_dtype_must_be_known():
    with pytest.raises(InvalidArgumentError, match="layout"):
        encode_array(np.zeros((2, 3)), "THW")
    with pytest.raises(InvalidArgumentError, match="dtype"):
        encode_array(np.zeros((2, 3), np.complex64), "HW")
