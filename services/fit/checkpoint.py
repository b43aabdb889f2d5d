"""Checkpoints of a running fit: what they hold, where they go and how they are encoded.

Every few frames the engine saves a checkpoint (`FitCheckpoint`) through a `CheckpointSink`: the
model, the counters and the outputs of the frames finished since the previous checkpoint, so
each frame's Gaussians are written once (a checkpoint of every frame so far would make the
writes grow with the square of the clip's length: 3.2 GB over a 50-frame 854x480 fit at 140k
Gaussians, docs/fit.md). A restarted job reads the sink's checkpoints in order, joins their
outputs, takes the model of the newest and carries on from the next frame. The fit stage
implements the sink over the object store; `FolderCheckpoints` keeps them in a local folder.
The encoding is a numpy .npz (no pickle) of named arrays plus a JSON header, so loading a
checkpoint can never run code.

Format 3 holds only the frames since the previous checkpoint (`first_frame` in its header);
formats 1 and 2 held every frame (first_frame 0) and still load, as the first of a chain.
Format 2 added the loss terms per frame; a format 1 checkpoint (no "format" in its header) still
loads, its frames' loss terms NaN.
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
FORMAT = 3
"""The checkpoint format this code writes; it reads this one and every older one."""


class CheckpointSink(Protocol):
    """Where a fit keeps its checkpoints. `frame` is the last frame a checkpoint includes; a
    fit's checkpoints build on each other, so a sink keeps all of them until `clear`."""

    def save(self, frame: int, data: bytes) -> None: ...

    def load_all(self) -> list[tuple[int, bytes]]:
        """Every checkpoint as (frame, bytes), oldest first."""
        ...

    def clear(self) -> None: ...


def checkpoint_name(frame: int) -> str:
    """The name a sink stores the checkpoint ending at `frame` under (names sort by frame)."""
    return f"frame_{frame:06d}.ckpt"


def checkpoint_frame(name: str) -> int:
    """The frame of a name made by `checkpoint_name` (a path or key ending in it)."""
    return int(name.rsplit("_", 1)[1].removesuffix(".ckpt"))


class FolderCheckpoints:
    """Checkpoints as files named by `checkpoint_name` in a folder, each written atomically."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)

    def _paths(self) -> list[Path]:
        return sorted(self.folder.glob("frame_*.ckpt"))

    def save(self, frame: int, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, self.folder / checkpoint_name(frame))

    def load_all(self) -> list[tuple[int, bytes]]:
        return [(checkpoint_frame(path.name), path.read_bytes()) for path in self._paths()]

    def clear(self) -> None:
        for path in self._paths():
            path.unlink(missing_ok=True)


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
    outputs: FitOutputs  # of frames first_frame .. first_frame + len - 1
    next_id: int  # id of the next new Gaussian
    seconds: float  # fitting time so far, over every run that contributed
    phase_seconds: dict[str, float]
    first_frame: int = 0  # the first frame `outputs` holds (those before: earlier checkpoints)

    @property
    def frames_done(self) -> int:
        return self.first_frame + len(self.outputs.frames)

    def to_bytes(self) -> bytes:
        g, out = self.gaussians, self.outputs
        arrays = {
            f"model_{f.name}": getattr(g, f.name).detach().cpu().numpy()
            for f in dataclasses.fields(g)
        }
        if self.moments is not None:
            arrays.update(self.moments.to_arrays())
        for t, frame in enumerate(out.frames, start=self.first_frame):
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
            "first_frame": self.first_frame,
            "frames_done": self.frames_done,
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
        first, done = int(meta.get("first_frame", 0)), int(meta["frames_done"])
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
                FrameGaussians(**{k: arrays[f"frame{t}_{k}"] for k in names})
                for t in range(first, done)
            ],
            psnr=[float(v) for v in arrays["psnr_t"]],
            moving_share=[float(v) for v in arrays["moving_share_t"]],
            depth_scale=[float(v) for v in arrays["depth_scale_t"]],
            depth=list(arrays["depth_thw"]),
            moving_mask=list(arrays["moving_mask_thw"]),
            held_back=[int(v) for v in arrays.get("held_back_t", np.zeros(done - first, np.int64))],
            loss_terms={
                name: [
                    float(v) for v in arrays.get(f"loss_{name}_t", np.full(done - first, np.nan))
                ]
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
            first_frame=first,
        )


def resumable_state(
    sink: CheckpointSink, fingerprint: str, device: torch.device
) -> FitCheckpoint | None:
    """The fit's state after the sink's newest checkpoint (the outputs of all of them joined)
    when they are for these inputs and settings (`fingerprint`) and follow on from each other;
    None when there is none, or they are for others or have a gap (logged: the fit then starts
    over)."""
    stored = sink.load_all()
    if not stored:
        return None
    state = None
    for frame, data in stored:
        part = FitCheckpoint.from_bytes(data, device)
        if part.fingerprint != fingerprint:
            logger.warning(
                "checkpoint of frame %d is for other inputs or settings; starting over", frame
            )
            return None
        expected = 0 if state is None else state.frames_done
        if part.first_frame != expected:
            logger.warning(
                "checkpoint of frame %d starts at frame %d, not %d: a checkpoint is missing; "
                "starting over",
                frame,
                part.first_frame,
                expected,
            )
            return None
        if state is not None:
            state.outputs.extend(part.outputs)
            part.outputs, part.first_frame = state.outputs, 0
        state = part
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
