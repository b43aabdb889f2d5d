"""Checkpoints of a running fit: what they hold, where they go and how they are encoded.

The engine saves its whole state (`FitCheckpoint`: the model, the outputs of the finished frames
and the counters) every few frames through a `CheckpointSink`; a restarted job asks the same sink
for the latest one and carries on from the next frame. The fit stage implements the sink over the
object store; `FolderCheckpoints` keeps them in a local folder. The encoding is a numpy .npz (no
pickle) of named arrays plus a JSON header, so loading a checkpoint can never run code.

Format 2 added the loss terms per frame; a format 1 checkpoint (no "format" in its header) still
loads, its frames' loss terms NaN. Format 1 code reads format 2 too (it ignores the new arrays).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from services.common.config import to_json
from services.common.errors import IntegrityError
from services.fit.config import FitConfig
from services.fit.gaussians import FrameGaussians, Gaussians
from services.fit.losses import TERMS
from services.fit.moments import AdamMoments
from services.fit.priors import FitPriors
from services.fit.result import FitOutputs

logger = logging.getLogger(__name__)

_META_KEY = "__meta__"
FORMAT = 2
"""The checkpoint format this code writes; it reads this one and every older one."""


class CheckpointSink(Protocol):
    """Where a fit keeps its checkpoints. `frame` is the last frame the checkpoint includes."""

    def save(self, frame: int, data: bytes) -> None: ...

    def load_latest(self) -> tuple[int, bytes] | None: ...


class FolderCheckpoints:
    """Checkpoints as files `frame_NNNNNN.ckpt` in a folder, written atomically; keeps the newest
    `keep` of them."""

    def __init__(self, folder: Path | str, keep: int = 1):
        self.folder = Path(folder)
        self.keep = max(1, keep)

    def _paths(self) -> list[Path]:
        return sorted(self.folder.glob("frame_*.ckpt"))

    def save(self, frame: int, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, self.folder / f"frame_{frame:06d}.ckpt")
        for old in self._paths()[: -self.keep]:
            old.unlink(missing_ok=True)

    def load_latest(self) -> tuple[int, bytes] | None:
        paths = self._paths()
        if not paths:
            return None
        latest = paths[-1]
        return int(latest.stem.split("_")[1]), latest.read_bytes()


def pack(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    """Named arrays and a JSON-able header as .npz bytes."""
    buffer = io.BytesIO()
    header = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    np.savez(buffer, **arrays, **{_META_KEY: header})
    return buffer.getvalue()


def unpack(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Inverse of `pack`; IntegrityError when the bytes are not a checkpoint."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(arrays.pop(_META_KEY).tobytes().decode())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise IntegrityError(f"fit checkpoint is unreadable: {exc}") from exc
    return arrays, meta


@dataclass
class FitCheckpoint:
    """A fit's whole state after its finished frames: what a resumed run needs to carry on."""

    fingerprint: str  # `inputs_fingerprint`: a checkpoint of other inputs is not resumed
    gaussians: Gaussians  # the model after the last finished frame
    moments: AdamMoments | None  # Adam's kept moments (FitConfig.keep_adam_state), else None
    outputs: FitOutputs
    next_id: int  # id of the next new Gaussian
    seconds: float  # fitting time so far, over every run that contributed
    phase_seconds: dict[str, float]

    def to_bytes(self) -> bytes:
        g, out = self.gaussians, self.outputs
        arrays = {
            f"model_{f.name}": getattr(g, f.name).detach().cpu().numpy()
            for f in dataclasses.fields(g)
        }
        if self.moments is not None:
            arrays.update(self.moments.to_arrays())
        for t, frame in enumerate(out.frames):
            arrays.update(
                {f"frame{t}_{f.name}": getattr(frame, f.name) for f in dataclasses.fields(frame)}
            )
        arrays["c2w_t44"] = np.stack(out.c2w)
        arrays["psnr_t"] = np.array(out.psnr)
        arrays["moving_share_t"] = np.array(out.moving_share)
        arrays["depth_scale_t"] = np.array(out.depth_scale)
        arrays["depth_thw"] = np.stack(out.depth)
        arrays["moving_mask_thw"] = np.stack(out.moving_mask)
        arrays["held_back_t"] = np.array(out.held_back, np.int64)
        arrays.update({f"loss_{k}_t": np.array(v) for k, v in out.loss_terms.items()})
        meta = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "frames_done": len(out.frames),
            "next_id": self.next_id,
            "seconds": self.seconds,
            "phase_seconds": self.phase_seconds,
        }
        return pack(arrays, meta)

    @classmethod
    def from_bytes(cls, data: bytes, device: torch.device) -> FitCheckpoint:
        """Inverse of `to_bytes`, the model on `device`; IntegrityError when the bytes are not a
        checkpoint or one of a newer format."""
        arrays, meta = unpack(data)
        version = int(meta.get("format", 1))
        if version > FORMAT:
            raise IntegrityError(
                f"fit checkpoint format {version} is newer than this code reads ({FORMAT}); "
                "resume it with the code that wrote it, or delete the checkpoint to start over"
            )
        try:
            return cls._from_stored(arrays, meta, device)
        except KeyError as exc:
            raise IntegrityError(f"fit checkpoint lacks {exc}; delete it to start over") from exc

    @classmethod
    def _from_stored(
        cls, arrays: dict[str, np.ndarray], meta: dict[str, Any], device: torch.device
    ) -> FitCheckpoint:
        done = int(meta["frames_done"])
        gaussians = Gaussians(
            **{
                f.name: torch.as_tensor(arrays[f"model_{f.name}"], device=device)
                for f in dataclasses.fields(Gaussians)
            }
        )
        names = [f.name for f in dataclasses.fields(FrameGaussians)]
        outputs = FitOutputs(
            c2w=list(arrays["c2w_t44"]),
            frames=[
                FrameGaussians(**{k: arrays[f"frame{t}_{k}"] for k in names}) for t in range(done)
            ],
            psnr=[float(v) for v in arrays["psnr_t"]],
            moving_share=[float(v) for v in arrays["moving_share_t"]],
            depth_scale=[float(v) for v in arrays["depth_scale_t"]],
            depth=list(arrays["depth_thw"]),
            moving_mask=list(arrays["moving_mask_thw"]),
            held_back=[int(v) for v in arrays.get("held_back_t", np.zeros(done, np.int64))],
            loss_terms={
                name: [float(v) for v in arrays.get(f"loss_{name}_t", np.full(done, np.nan))]
                for name in TERMS
            },
        )
        return cls(
            fingerprint=str(meta.get("fingerprint")),
            gaussians=gaussians,
            moments=AdamMoments.from_arrays(arrays, device),
            outputs=outputs,
            next_id=int(meta["next_id"]),
            seconds=float(meta["seconds"]),
            phase_seconds={k: float(v) for k, v in meta.get("phase_seconds", {}).items()},
        )


def resumable_state(
    sink: CheckpointSink, fingerprint: str, device: torch.device
) -> FitCheckpoint | None:
    """The sink's latest checkpoint when it is for these inputs and settings (`fingerprint`);
    None when there is none or it is for others (logged: the fit then starts over)."""
    latest = sink.load_latest()
    if latest is None:
        return None
    frame, data = latest
    state = FitCheckpoint.from_bytes(data, device)
    if state.fingerprint != fingerprint:
        logger.warning(
            "checkpoint of frame %d is for other inputs or settings; starting over", frame
        )
        return None
    return state


def inputs_fingerprint(
    priors: FitPriors, cfg: FitConfig, device: torch.device, renderer: str
) -> str:
    """Hash of the inputs and of every setting that changes the result (the checkpoint interval
    does not), including the device type and renderer (the fit's runtime) that wrote it."""
    digest = hashlib.sha256()
    settings = dataclasses.replace(cfg, checkpoint_every=1)
    digest.update(to_json(settings).encode())
    digest.update(f"{device.type} {renderer}".encode())
    for array in (
        priors.frames_thw3,
        priors.depth_thw,
        priors.K_33,
        priors.flow_fwd_t1hw2,
        priors.flow_bwd_t1hw2,
        priors.moving_thw,
        priors.c2w_t44,
        priors.depth_confidence_thw,
    ):
        if array is None:
            digest.update(b"none")
        else:
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
