"""The part the torch backends share: a model on a device, fed padded uint8 frames in batches."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from services.flow.backends.base import Pads, crop_flow, pad_frames, pads_for, tensor_bytes


class PaddedTorchBackend(ABC):
    """Pads frames to the model's size multiple, runs it without autograd, crops the flow back."""

    name: str
    size_multiple: int  # the model needs input sides that are multiples of this
    min_side: int  # ... and at least this long (a multiple of size_multiple)

    def __init__(self, net: torch.nn.Module, device: str):
        self.net = net.eval().to(device)
        self.device = device
        self.model_bytes = tensor_bytes(net)

    def pads(self, height: int, width: int) -> Pads:
        return pads_for(height, width, self.size_multiple, self.min_side)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        pads = self.pads(height, width)
        return height + pads.top + pads.bottom, width + pads.left + pads.right

    @abstractmethod
    def item_bytes(self, height: int, width: int) -> int: ...

    @abstractmethod
    def predict(self, src_b3hw: torch.Tensor, dst_b3hw: torch.Tensor) -> torch.Tensor:
        """Flow [B, 2, H, W] from float RGB in [0, 255] [B, 3, H, W] (padded)."""

    def _to_tensor(self, frames_bhw3: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(frames_bhw3)).to(self.device)
        return tensor.permute(0, 3, 1, 2).float()

    def flow(self, src_bhw3: np.ndarray, dst_bhw3: np.ndarray) -> np.ndarray:
        pads = self.pads(src_bhw3.shape[1], src_bhw3.shape[2])
        src = self._to_tensor(pad_frames(src_bhw3, pads))
        dst = self._to_tensor(pad_frames(dst_bhw3, pads))
        with torch.inference_mode():
            flow_b2hw = self.predict(src, dst)
        flow_bhw2 = flow_b2hw.permute(0, 2, 3, 1).float().cpu().numpy()
        return crop_flow(flow_bhw2, pads)
