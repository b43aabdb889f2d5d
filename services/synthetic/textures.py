"""Procedural textures for the synthetic scenes: lattice value noise, fBm and tile patterns.

Every colour is a pure function of a surface point's material coordinates (plus the pixel
footprint, see below), so a surface point keeps its colour from frame to frame and warping a frame
by the ground-truth flow reproduces the next one. Detail finer than about two pixels fades to its
mean (analytic prefiltering by the pixel footprint, in metres), so small renders and grazing views
of the ground do not alias while large renders get the fine octaves that optical flow can track.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_TABLE = 1024  # lattice period in cells; a power of two so `& _MASK` wraps indices
_MASK = _TABLE - 1


@dataclass(frozen=True)
class NoiseTable:
    """A seeded permutation and lattice values: the whole randomness of the noise."""

    perm_k: np.ndarray  # int64 [_TABLE], a permutation of 0.._TABLE-1
    values_k: np.ndarray  # float32 [_TABLE], uniform in [0, 1]

    @classmethod
    def from_rng(cls, rng: np.random.Generator) -> NoiseTable:
        return cls(
            perm_k=rng.permutation(_TABLE).astype(np.int64),
            values_k=rng.random(_TABLE).astype(np.float32),
        )

    def hash2(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Lattice value in [0, 1] at integer cell (i, j)."""
        p = self.perm_k
        return self.values_k[p[(p[i & _MASK] + j) & _MASK]]

    def hash3(self, i: np.ndarray, j: np.ndarray, k: np.ndarray) -> np.ndarray:
        p = self.perm_k
        return self.values_k[p[(p[(p[i & _MASK] + j) & _MASK] + k) & _MASK]]


def _fade(f: np.ndarray) -> np.ndarray:
    """Quintic smoothstep: C2-continuous interpolation weights, so the noise has no creases."""
    return f * f * f * (f * (f * 6.0 - 15.0) + 10.0)


def _split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cell = np.floor(x)
    return cell.astype(np.int64), _fade((x - cell).astype(np.float32))


def value_noise2(table: NoiseTable, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Smooth 2D value noise in [0, 1] with unit lattice spacing."""
    i, fu = _split(u)
    j, fv = _split(v)
    a = table.hash2(i, j) + fu * (table.hash2(i + 1, j) - table.hash2(i, j))
    b = table.hash2(i, j + 1) + fu * (table.hash2(i + 1, j + 1) - table.hash2(i, j + 1))
    return a + fv * (b - a)


def value_noise3(table: NoiseTable, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Smooth 3D value noise in [0, 1] (for textures on object surfaces, free of seams)."""
    i, fx = _split(x)
    j, fy = _split(y)
    k, fz = _split(z)
    out = np.zeros_like(fx)
    for di, wx in ((0, 1.0 - fx), (1, fx)):
        for dj, wy in ((0, 1.0 - fy), (1, fy)):
            wxy = wx * wy
            for dk, wz in ((0, 1.0 - fz), (1, fz)):
                out += wxy * wz * table.hash3(i + di, j + dj, k + dk)
    return out


def detail_weight(wavelength_m: float | np.ndarray, footprint_m: np.ndarray) -> np.ndarray:
    """1 where a feature spans >= 5 pixels, 0 below 2.5 pixels, linear in between."""
    return np.clip(wavelength_m / footprint_m * 0.4 - 1.0, 0.0, 1.0).astype(np.float32)


def fbm(
    table: NoiseTable,
    coords_m: tuple[np.ndarray, ...],
    footprint_m: np.ndarray,
    base_wavelength_m: float,
    n_octaves: int,
    persistence: float = 0.55,
) -> np.ndarray:
    """Fractal sum of value-noise octaves in [0, 1]; octaves under ~2 px fade to their mean.

    `coords_m` holds two (plane) or three (object) coordinate arrays in metres.
    """
    total = np.zeros(footprint_m.shape, np.float32)
    norm = 0.0
    for octave in range(n_octaves):
        wavelength = base_wavelength_m / 2.0**octave
        amplitude = persistence**octave
        norm += amplitude
        weight = detail_weight(wavelength, footprint_m)
        if not weight.any():
            total += amplitude * 0.5
            continue
        # A per-octave rotation and shift keeps lattice axes from lining up across octaves.
        angle = 0.9 * octave + 0.3
        shift = 17.31 * octave
        c, s = np.cos(angle), np.sin(angle)
        if len(coords_m) == 2:
            u, v = coords_m
            noise = value_noise2(
                table, (c * u - s * v) / wavelength + shift, (s * u + c * v) / wavelength - shift
            )
        else:
            x, y, z = coords_m
            noise = value_noise3(
                table,
                (c * x - s * z) / wavelength + shift,
                y / wavelength - shift,
                (s * x + c * z) / wavelength + 0.5 * shift,
            )
        total += amplitude * (0.5 + weight * (noise - 0.5))
    return total / norm


def contrast(x: np.ndarray, gain: float) -> np.ndarray:
    """Stretch values around 0.5 (interpolated noise bunches near its mean) and clip to [0, 1]."""
    return np.clip(0.5 + gain * (x - 0.5), 0.0, 1.0)


def smoothstep(lo: float | np.ndarray, hi: float | np.ndarray, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - lo) / np.maximum(hi - lo, 1e-9), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


@dataclass(frozen=True)
class Tiles:
    """A running-bond tile layout (square tiles with offset 0, bricks with offset 0.5)."""

    size_u_m: float
    size_v_m: float
    row_offset: float
    grout_m: float

    def evaluate(
        self, table: NoiseTable, u: np.ndarray, v: np.ndarray, footprint_m: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns (per-tile random value in [0,1], interior weight (0 in grout), pattern weight).

        The pattern weight fades the whole layout out where tiles shrink under a few pixels.
        """
        rows = v / self.size_v_m
        row = np.floor(rows)
        cols = u / self.size_u_m + self.row_offset * row
        col = np.floor(cols)
        du = (cols - col) * self.size_u_m
        dv = (rows - row) * self.size_v_m
        edge_m = np.minimum(np.minimum(du, self.size_u_m - du), np.minimum(dv, self.size_v_m - dv))
        half_grout = 0.5 * self.grout_m
        soft = np.maximum(3.0 * footprint_m, 0.5 * self.grout_m)
        interior = smoothstep(half_grout, half_grout + soft, edge_m)
        tile_value = table.hash2(col.astype(np.int64) + 7, row.astype(np.int64) + 13)
        pattern = detail_weight(min(self.size_u_m, self.size_v_m), footprint_m)
        return tile_value, interior, pattern
