"""The shared bilinear sampler against exact values."""

from __future__ import annotations

import numpy as np

from services.common.geometry import pixel_grid_hw2
from services.common.sampling import sample_bilinear, sample_extrapolated
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


def test_a_point_on_a_masks_outline_reads_the_usable_sides_affine_map():
    """The map is affine; only columns 0-9 are usable. A point at x = 9.6 has two usable corners:
    the bilinear read gives their values (the map at x = 9, off by 0.6 of the gradient), the
    first-order read the map at the point, also where the 4x4 square leaves the image. Points
    with all or none of their corners usable, or too few usable pixels around them, read as
    sample_bilinear does, bit for bit."""
    grid_hw2 = pixel_grid_hw2(20, 16)
    affine_hw2 = np.stack(
        [0.3 * grid_hw2[..., 0] - 0.1 * grid_hw2[..., 1] + 1.0, -0.2 * grid_hw2[..., 0] + 0.5], -1
    )
    usable_hw = grid_hw2[..., 0] <= 9
    on_outline_n2 = np.array([[9.6, 7.3], [9.6, 0.2], [9.25, 19.0]])
    x_n, y_n = on_outline_n2.T
    expected_n2 = np.stack([0.3 * x_n - 0.1 * y_n + 1.0, -0.2 * x_n + 0.5], axis=1)
    np.testing.assert_allclose(
        sample_extrapolated(affine_hw2, on_outline_n2, usable_hw), expected_n2, atol=1e-9
    )
    bilinear_n2 = sample_bilinear(affine_hw2, on_outline_n2, usable_hw)
    assert np.abs(bilinear_n2 - expected_n2).max() > 0.1
    elsewhere_n2 = np.array([[4.3, 5.5], [12.5, 3.0]])  # inside; no usable corner
    assert np.array_equal(
        sample_extrapolated(affine_hw2, elsewhere_n2, usable_hw),
        sample_bilinear(affine_hw2, elsewhere_n2, usable_hw),
    )
    one_pixel_hw = np.zeros_like(usable_hw)
    one_pixel_hw[7, 9] = True
    assert np.array_equal(
        sample_extrapolated(affine_hw2, on_outline_n2[:1], one_pixel_hw),
        sample_bilinear(affine_hw2, on_outline_n2[:1], one_pixel_hw),
    )
