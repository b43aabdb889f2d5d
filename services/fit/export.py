"""Exports: Gaussians as the PLY that 3DGS viewers read, camera poses as TUM trajectories.

PLY layout (binary little-endian, one float32 per property, the INRIA 3DGS convention):
x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3,
with colours as degree-0 spherical-harmonic coefficients (rgb = 0.5 + C0 * f_dc), opacity as a
logit, scales as natural logs and rotations as unit quaternions (w, x, y, z); normals are zero.
TUM: one line per frame, `timestamp tx ty tz qx qy qz qw`, camera-to-world.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TextIO

import numpy as np
from scipy.spatial.transform import Rotation

from services.common.errors import InvalidArgumentError

if TYPE_CHECKING:  # only a type here: reading a PLY (the viewer) does not load torch
    from services.fit.gaussians import FrameGaussians

SH_C0 = 0.28209479177387814
"""Degree-0 spherical harmonic: rgb = 0.5 + SH_C0 * f_dc."""
PLY_PROPERTIES = (
    "x",
    "y",
    "z",
    "nx",
    "ny",
    "nz",
    "f_dc_0",
    "f_dc_1",
    "f_dc_2",
    "opacity",
    "scale_0",
    "scale_1",
    "scale_2",
    "rot_0",
    "rot_1",
    "rot_2",
    "rot_3",
)
_OPACITY_CLIP = 1e-6  # keeps the logit finite for opacities of exactly 0 or 1


def ply_bytes(frame: FrameGaussians) -> bytes:
    """The PLY file of one frame's Gaussians."""
    n = len(frame)
    opacity_n = np.clip(frame.opacities_n.astype(np.float64), _OPACITY_CLIP, 1 - _OPACITY_CLIP)
    quats_n4 = frame.quats_n4 / np.linalg.norm(frame.quats_n4, axis=1, keepdims=True)
    columns = [
        frame.means_n3,
        np.zeros((n, 3)),
        (frame.colors_n3 - 0.5) / SH_C0,
        np.log(opacity_n / (1 - opacity_n))[:, None],
        np.log(frame.scales_n3),
        quats_n4,
    ]
    table = np.concatenate([np.asarray(c, np.float64).reshape(n, -1) for c in columns], axis=1)
    header = "\n".join(
        ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
        + [f"property float {name}" for name in PLY_PROPERTIES]
        + ["end_header"]
    )
    return (header + "\n").encode("ascii") + table.astype("<f4").tobytes()


def write_ply(frame: FrameGaussians, path_or_file: str | Path | BinaryIO) -> None:
    """Writes one frame's Gaussians as a 3DGS PLY to a path or a binary file object."""
    data = ply_bytes(frame)
    if isinstance(path_or_file, (str, Path)):
        Path(path_or_file).write_bytes(data)
    else:
        path_or_file.write(data)


def intrinsics_json(K_33: np.ndarray) -> dict[str, float]:
    """The intrinsics artifact of the depth and fit stages: {"fx", "fy", "cx", "cy"} (pixel
    centres at integer coordinates)."""
    return {
        "fx": float(K_33[0, 0]),
        "fy": float(K_33[1, 1]),
        "cx": float(K_33[0, 2]),
        "cy": float(K_33[1, 2]),
    }


def intrinsics_33(intrinsics: dict[str, float]) -> np.ndarray:
    """K (float64 [3, 3]) from an intrinsics artifact (see `intrinsics_json`)."""
    return np.array(
        [
            [intrinsics["fx"], 0.0, intrinsics["cx"]],
            [0.0, intrinsics["fy"], intrinsics["cy"]],
            [0.0, 0.0, 1.0],
        ],
        np.float64,
    )


def tum_lines(c2w_t44: np.ndarray, fps: float) -> list[str]:
    """One TUM line per frame: `timestamp tx ty tz qx qy qz qw` (timestamp = t / fps)."""
    c2w_t44 = np.asarray(c2w_t44, np.float64)
    if c2w_t44.ndim != 3 or c2w_t44.shape[1:] != (4, 4):
        raise InvalidArgumentError("c2w_t44", f"need [T, 4, 4] poses, got {c2w_t44.shape}")
    if not fps > 0:
        raise InvalidArgumentError("fps", f"{fps} must be positive")
    if len(c2w_t44) == 0:
        return []
    quats_t4 = Rotation.from_matrix(c2w_t44[:, :3, :3]).as_quat()  # (x, y, z, w)
    return [
        f"{t / fps:.6f} " + " ".join(f"{v:.9f}" for v in (*c2w[:3, 3], *quat))
        for t, (c2w, quat) in enumerate(zip(c2w_t44, quats_t4, strict=True))
    ]


def write_tum(c2w_t44: np.ndarray, fps: float, path_or_file: str | Path | TextIO) -> None:
    """Writes the TUM trajectory (with a comment header naming the columns)."""
    text = "# timestamp tx ty tz qx qy qz qw\n" + "".join(
        line + "\n" for line in tum_lines(c2w_t44, fps)
    )
    if isinstance(path_or_file, (str, Path)):
        Path(path_or_file).write_text(text)
    else:
        path_or_file.write(text)


def ply_table(data: bytes) -> np.ndarray:
    """float32 [N, len(PLY_PROPERTIES)] rows of a PLY written by `ply_bytes` (columns in
    PLY_PROPERTIES order); a header that is not ours or a short body is refused."""
    header, sep, body = data.partition(b"end_header\n")
    lines = header.decode("ascii", "replace").splitlines()
    names = tuple(line.split()[-1] for line in lines if line.startswith("property float"))
    counts = [int(line.split()[-1]) for line in lines if line.startswith("element vertex")]
    if not sep or names != PLY_PROPERTIES or len(counts) != 1:
        raise InvalidArgumentError("ply", "is not a GFlow Gaussian PLY (see PLY_PROPERTIES)")
    row_bytes = 4 * len(PLY_PROPERTIES)
    if len(body) != counts[0] * row_bytes:
        raise InvalidArgumentError(
            "ply", f"body holds {len(body)} bytes, the header says {counts[0]} rows of {row_bytes}"
        )
    return np.frombuffer(body, "<f4").reshape(counts[0], len(PLY_PROPERTIES))
