"""What every flow backend provides, and the small pure helpers the torch backends share."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from services.common.errors import FailedPreconditionError

log = logging.getLogger(__name__)


class FlowBackend(Protocol):
    """A loaded flow model. The engine batches directed frame pairs and calls `flow`."""

    name: str
    device: str  # where it runs: "cpu" or "cuda[:N]"
    model_bytes: int  # memory the loaded model itself holds on `device`

    def item_bytes(self, height: int, width: int) -> int:
        """Estimated peak working memory for one directed pair at this resolution."""
        ...

    def flow(self, src_bhw3: np.ndarray, dst_bhw3: np.ndarray) -> np.ndarray:
        """float32 [B, H, W, 2] flow (dx, dy) from each uint8 RGB source frame to its target."""
        ...


@dataclass(frozen=True)
class Pads:
    """Rows and columns added on each side of an image (edge values), removed from the flow."""

    top: int
    bottom: int
    left: int
    right: int


def pads_for(height: int, width: int, multiple: int, min_side: int = 0) -> Pads:
    """Centred padding to sides that are multiples of `multiple` and at least `min_side` long."""
    extra_h = max(height + -height % multiple, min_side) - height
    extra_w = max(width + -width % multiple, min_side) - width
    return Pads(extra_h // 2, extra_h - extra_h // 2, extra_w // 2, extra_w - extra_w // 2)


def pad_frames(frames_bhw3: np.ndarray, pads: Pads) -> np.ndarray:
    """Frames grown by `pads`, repeating the edge pixels (no hard black border for the model)."""
    spec = ((0, 0), (pads.top, pads.bottom), (pads.left, pads.right), (0, 0))
    return np.pad(frames_bhw3, spec, mode="edge")


def crop_flow(flow_bhw2: np.ndarray, pads: Pads) -> np.ndarray:
    """The flow of the original pixels: padding only shifts coordinates, never displacements."""
    height, width = flow_bhw2.shape[1:3]
    return flow_bhw2[:, pads.top : height - pads.bottom, pads.left : width - pads.right]


def load_weights_file(path: Path | None, field: str, how_to_get: str) -> dict[str, Any]:
    """The tensors of a torch checkpoint at a user-given path, loaded with weights_only=True."""
    import torch

    if path is None:
        raise FailedPreconditionError(f"{field} is not set: {how_to_get}", reason="WEIGHTS_MISSING")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FailedPreconditionError(
            f"{field}: no weights file at {path}: {how_to_get}", reason="WEIGHTS_MISSING"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable or unsafe files
        raise FailedPreconditionError(
            f"{field}: {path} is not a loadable torch checkpoint ({type(exc).__name__}: {exc}); "
            f"{how_to_get}",
            reason="WEIGHTS_UNREADABLE",
        ) from exc
    if not isinstance(checkpoint, dict):
        raise FailedPreconditionError(
            f"{field}: {path} holds a {type(checkpoint).__name__}, not a state dict; {how_to_get}",
            reason="WEIGHTS_UNREADABLE",
        )
    return checkpoint


def load_state(
    model: Any, state: dict[str, Any], path: Path, field: str, what: str, *, strict: bool = True
) -> None:
    """Load `state` into `model`; a tensor the model needs but the file lacks, or one of the wrong
    shape, is a clear precondition. With strict=False, extra tensors in the file are only logged."""
    try:
        result = model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:400]
        raise FailedPreconditionError(
            f"{field}: {path} does not fit {what}: {detail}", reason="WEIGHTS_MISMATCH"
        ) from exc
    if result.missing_keys:
        raise FailedPreconditionError(
            f"{field}: {path} does not fit {what}: it lacks {len(result.missing_keys)} tensors "
            f"(first: {result.missing_keys[0]})",
            reason="WEIGHTS_MISMATCH",
        )
    if result.unexpected_keys:
        log.warning(
            "%s: ignored %d tensors %s has beyond %s (first: %s)",
            field,
            len(result.unexpected_keys),
            path,
            what,
            result.unexpected_keys[0],
        )


def tensor_bytes(model: Any) -> int:
    """Bytes of all parameters and buffers of a torch module."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
