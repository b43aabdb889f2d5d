"""The shared bilinear sampler against exact values."""

from __future__ import annotations

import numpy as np

from services.common.geometry import pixel_grid_hw2
from services.common.sampling import sample_bilinear
from services.flow.consistency import warp_image


def test_bilinear_sampling_is_exact_on_linear_maps():
    grid_hw2 = pixel_grid_hw2(48, 64)
    linear_hw2 = np.stack([2 * grid_hw2[..., 0] + grid_hw2[..., 1], grid_hw2[..., 1] - 3.0], -1)
    xy_n2 = np.array([[0.0, 0.0], [10.25, 7.5], [62.9, 46.1]])
    expected_n2 = np.stack([2 * xy_n2[:, 0] + xy_n2[:, 1], xy_n2[:, 1] - 3.0], axis=1)
    assert np.allclose(sample_bilinear(linear_hw2, xy_n2), expected_n2)


def test_points_outside_read_the_nearest_edge_and_warping_reads_the_same_sampler():
    rng = np.random.default_rng(3)
    map_hw1 = rng.normal(size=(5, 7, 1))
    outside_n2 = np.array([[-3.0, 2.0], [9.5, -1.0], [6.0, 4.0]])
    assert np.allclose(
        sample_bilinear(map_hw1, outside_n2)[:, 0],
        [map_hw1[2, 0, 0], map_hw1[0, 6, 0], map_hw1[4, 6, 0]],
    )
    flow_hw2 = rng.uniform(-2, 2, (5, 7, 2)).astype(np.float32)
    landing_p2 = (pixel_grid_hw2(5, 7) + flow_hw2).reshape(-1, 2)
    assert np.allclose(
        warp_image(map_hw1[..., 0], flow_hw2).reshape(-1),
        sample_bilinear(map_hw1, landing_p2)[:, 0],
        atol=1e-6,
    )
