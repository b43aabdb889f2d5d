"""The compiled loss code on the GPU (inductor), run the way the fit server runs fits: in a worker
thread. Against the eager fit of the same clip: the same quality within the spread that gsplat's
non-deterministic backward pass gives two eager runs.

Run: .venv/bin/python -m pytest tests/gpu/test_fit_compiled.py -q
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from services.evaluation import metrics
from services.evaluation.fit_suite import exact_priors
from services.fit.config import FitRuntime, preset
from services.fit.engine import fit
from services.fit.rasterizer_gsplat import gsplat_available
from services.fit.result import FitResult
from services.synthetic.scene import SceneConfig, make_scene

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (an NVIDIA GPU)"),
    pytest.mark.skipif(not gsplat_available(), reason="needs gsplat: pip install gsplat==1.5.3"),
]


def test_compiled_fit_in_a_worker_thread_matches_eager():
    scene = make_scene(SceneConfig(width=192, height=144, n_frames=6))
    priors = exact_priors(scene)
    cfg = preset("fast")
    eager = fit(priors, cfg, FitRuntime(device="cuda", compile=False))

    box: dict[str, FitResult | BaseException] = {}

    def work() -> None:
        try:
            box["result"] = fit(priors, cfg, FitRuntime(device="cuda", compile=True))
        except BaseException as exc:  # re-raised in the test's thread
            box["result"] = exc

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    compiled = box["result"]
    if isinstance(compiled, BaseException):
        raise compiled

    assert np.isfinite(compiled.psnr_t).all()
    assert abs(compiled.psnr_t.mean() - eager.psnr_t.mean()) < 0.5
    ate_eager = metrics.ate_rpe(eager.c2w_t44, scene.c2w_t44)["ate"]
    ate_compiled = metrics.ate_rpe(compiled.c2w_t44, scene.c2w_t44)["ate"]
    assert ate_compiled < max(2 * ate_eager, 1e-3)
