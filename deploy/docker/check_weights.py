"""Warn, before a stage server starts, about model weights that are not where the image expects.

Weights are mounted read-only at /weights (never baked into an image). A missing file is not
fatal: the service starts, the backend that needs it reports unavailable in Describe, and the
weight-free backends (offline depth, DIS flow) keep working. This script only makes the cause
plain in the container log, naming the file, the environment variable and where to get it.

Usage: python check_weights.py STAGE   (exit status 0 unless STAGE is unknown)
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("gflow.check_weights")


@dataclass(frozen=True)
class Weight:
    env: str  # environment variable holding the path
    default: str  # path used when the variable is unset
    backend: str  # backend that needs the file
    source: str  # where a user gets the file


WEIGHTS: dict[str, list[Weight]] = {
    "depth": [
        Weight(
            "GFLOW_MAST3R_CHECKPOINT",
            "/weights/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth",
            "mast3r",
            "https://download.europe.naverlabs.com/ComputerVision/MASt3R/"
            "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth (non-commercial licence)",
        )
    ],
    "flow": [
        Weight(
            "GFLOW_RAFT_WEIGHTS",
            "/weights/raft_small_C_T_V2-01064c6d.pth",
            "raft",
            "https://download.pytorch.org/models/raft_small_C_T_V2-01064c6d.pth "
            "(or raft_large_C_T_SKHT_V2-ff5fadd5.pth with raft_model=large)",
        ),
        Weight(
            "GFLOW_UNIMATCH_CHECKPOINT",
            "/weights/gmflow-scale2-regrefine6-mixdata-train320x576-4e7b215d.pth",
            "unimatch",
            "https://s3.eu-central-1.amazonaws.com/avg-projects/unimatch/pretrained/"
            "gmflow-scale2-regrefine6-mixdata-train320x576-4e7b215d.pth (UniMatch MODEL_ZOO.md)",
        ),
    ],
    "segment": [],
    "fit": [],
    "pipeline": [],
}


def missing_weights(stage: str, environ: dict[str, str]) -> list[str]:
    """One message per weights file of `stage` that is not a readable file."""
    messages = []
    for weight in WEIGHTS[stage]:
        path = Path(environ.get(weight.env) or weight.default)
        if path.is_file() and os.access(path, os.R_OK):
            continue
        messages.append(
            f"gflow {stage}: {weight.backend} weights not found at {path} ({weight.env}). "
            f"The service starts; backend '{weight.backend}' reports unavailable in Describe. "
            f"Get the file from {weight.source}, put it in the folder mounted read-only at "
            f"{path.parent}, or point {weight.env} at it."
        )
    return messages


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if len(argv) != 1 or argv[0] not in WEIGHTS:
        log.error("usage: check_weights.py STAGE  (one of %s)", ", ".join(WEIGHTS))
        return 2
    for message in missing_weights(argv[0], dict(os.environ)):
        log.warning("%s", message)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
