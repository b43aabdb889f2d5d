"""MASt3R depth on CUDA with a real checkpoint: positive stripe-free depth, poses that match the
real ScanNet poses, and a measured peak inside the planner's estimate.

Needs CUDA, the mast3r package (see services/depth/backends/mast3r.py, INSTALL_HINT) and
GFLOW_MAST3R_CHECKPOINT=/path/to/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth.
Run: .venv/bin/python -m pytest tests/gpu/test_depth_gpu.py -q -s   (-s prints the figures)
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from services.common.geometry import relative_pose_from_c2w
from services.depth.backends import mast3r
from services.depth.engine import DepthConfig, estimate_depth
from services.depth.quality import ARTEFACT_LIMIT
from services.evaluation.metrics import rotation_error_deg

CHECKPOINT = os.environ.get("GFLOW_MAST3R_CHECKPOINT")
READY, DETAIL = mast3r.availability()
pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (an NVIDIA GPU)"),
    pytest.mark.skipif(not READY, reason=f"mast3r unavailable: {DETAIL}"),
    pytest.mark.skipif(
        not CHECKPOINT or not Path(CHECKPOINT).is_file(),
        reason="set GFLOW_MAST3R_CHECKPOINT to the MASt3R checkpoint (.pth)",
    ),
]
NAMES = ("0048", "0054", "0060", "0066")


def test_mast3r_on_scannet(shared_data):
    root = shared_data / "scannet-posed"
    images = [cv2.imread(str(root / "color" / f"{n}.png")) for n in NAMES]
    frames = np.stack([cv2.cvtColor(image, cv2.COLOR_BGR2RGB) for image in images])
    gt_c2w = np.stack([np.loadtxt(root / "pose" / f"{n}.txt") for n in NAMES])
    torch.cuda.reset_peak_memory_stats()
    result = estimate_depth(frames, DepthConfig(backend="mast3r", mast3r_checkpoint=CHECKPOINT))
    peak = torch.cuda.max_memory_allocated()
    print(f"\nplan {result.plan}\nmeasured peak {peak / 2**30:.2f} GiB\nrepairs {result.repairs}")
    print(f"quality {result.quality}")
    assert np.all(np.isfinite(result.depth_thw)) and np.all(result.depth_thw > 0)
    assert result.depth_thw.shape == (4, 480, 640)
    assert result.quality.periodic_artefact < ARTEFACT_LIMIT
    assert peak <= result.plan.estimated_peak_bytes
    rot = [
        rotation_error_deg(
            relative_pose_from_c2w(result.c2w_t44[a], result.c2w_t44[b])[0],
            relative_pose_from_c2w(gt_c2w[a], gt_c2w[b])[0],
        )
        for a, b in itertools.combinations(range(4), 2)
    ]
    print(f"rotation errors (deg) {np.round(rot, 2)}")
    assert max(rot) < 3.0
