"""The depth and flow images carry MASt3R and UniMatch, and run them as this checkout does.

`make test-containers` builds the images with the pinned sources of ../shared/third_party
(deploy/lab/build-images.sh). Here each image runs its engine on a tiny random model of the real
architecture, saved in the model's released checkpoint format and mounted read-only at /weights,
with no network; the container's depth and flow must equal what the same engine computes in this
process from the same checkpoint (both on one thread: bit-identical here).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import docker
import numpy as np
import pytest
import torch
from docker.types import Mount

from services.common.config import to_json
from services.depth.engine import DepthConfig, DepthRuntime, estimate_depth
from services.flow.backends import unimatch
from services.flow.engine import FlowConfig, FlowRuntime, compute_flow
from services.ops.lab import LabSettings, connect, image_name
from services.synthetic.scene import SceneConfig, make_scene
from tests.integration.test_e2e_services import one_thread  # noqa: F401 - autouse fixture
from tests.third_party import needs_package
from tests.unit.test_depth_mast3r import FAST, tiny_checkpoint  # noqa: F401 - fixture by name

log = logging.getLogger(__name__)

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("GFLOW_TEST_CONTAINERS") != "1",
        reason="needs dockerd and the locally built images: run `make test-containers`",
    ),
    pytest.mark.skipif(
        os.environ.get("GFLOW_MODEL_CODE") == "none",
        reason="the images were built without MASt3R and UniMatch (GFLOW_MODEL_CODE=none)",
    ),
]

IO_IN_CONTAINER = "/io"
WEIGHTS_IN_CONTAINER = "/weights"
# What the container runs: the engine on /io/frames.npy with /io/config.json on the CPU, its
# result to /io.
DEPTH_SCRIPT = """
import json, numpy as np
from services.common.config import parse_config_json
from services.depth.engine import DepthConfig, DepthRuntime, describe_backends, estimate_depth
cfg = parse_config_json(open('/io/config.json').read(), DepthConfig)
result = estimate_depth(np.load('/io/frames.npy'), cfg, DepthRuntime(device='cpu'))
np.save('/io/depth.npy', result.depth_thw)
json.dump({'backends': describe_backends(), 'repairs': result.repairs}, open('/io/out.json', 'w'))
"""
FLOW_SCRIPT = """
import json, numpy as np
from services.common.config import parse_config_json
from services.flow.engine import FlowConfig, FlowRuntime, compute_flow, describe_backends
cfg = parse_config_json(open('/io/config.json').read(), FlowConfig)
result = compute_flow(np.load('/io/frames.npy'), cfg, FlowRuntime(device='cpu'))
np.save('/io/flow.npy', np.stack([(p.flow_fwd_hw2, p.flow_bwd_hw2) for p in result.pairs]))
backends = [(b.name, b.available, b.detail) for b in describe_backends()]
json.dump({'backends': backends}, open('/io/out.json', 'w'))
"""


def run_in_image(
    service: str, script: str, frames_thw3: np.ndarray, config, weights: Path, io_dir: Path
) -> dict:
    """Run `script` in the CPU image of `service` as its user, without network, with the frames
    and config in /io and `weights` (a file) read-only in /weights; returns its out.json."""
    io_dir.chmod(0o777)  # the image's user (uid 10001) writes its results here
    np.save(io_dir / "frames.npy", frames_thw3)
    (io_dir / "config.json").write_text(to_json(config))
    weights.chmod(0o644)
    weights.parent.chmod(0o755)
    image = image_name(LabSettings(), service, on_gpu=False)
    started = time.monotonic()
    try:
        connect().containers.run(
            image,
            entrypoint=["python", "-c", script],
            command=[],
            environment={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
            mounts=[
                Mount(IO_IN_CONTAINER, str(io_dir), "bind"),
                Mount(WEIGHTS_IN_CONTAINER, str(weights.parent), "bind", read_only=True),
            ],
            network_mode="none",
            remove=True,
        )
    except docker.errors.ContainerError as err:
        pytest.fail(f"{image} failed:\n{err.stderr.decode(errors='replace')}")
    log.info("%s ran %s in %.1f s", image, config.backend, time.monotonic() - started)
    return json.loads((io_dir / "out.json").read_text())


@needs_package("mast3r")
def test_depth_image_runs_mast3r_as_this_checkout_does(tiny_checkpoint: Path, tmp_path: Path):  # noqa: F811
    frames_thw3 = make_scene(SceneConfig(height=60, width=90, n_frames=3)).frames_thw3
    cfg = DepthConfig(
        backend="mast3r",
        mast3r_checkpoint=Path(WEIGHTS_IN_CONTAINER) / tiny_checkpoint.name,
        window=3,
        overlap=1,
        **FAST,
    )
    io_dir = tmp_path / "io"
    io_dir.mkdir()
    out = run_in_image("depth", DEPTH_SCRIPT, frames_thw3, cfg, tiny_checkpoint, io_dir)
    backends = {name: available for name, available, _detail in out["backends"]}
    assert backends == {"offline": True, "mast3r": True}
    here = estimate_depth(
        frames_thw3,
        dataclasses.replace(cfg, mast3r_checkpoint=tiny_checkpoint),
        DepthRuntime(device="cpu"),
    )
    assert out["repairs"] == here.repairs
    assert not any("used the offline backend" in r for r in here.repairs)  # MASt3R's own depth
    np.testing.assert_array_equal(np.load(io_dir / "depth.npy"), here.depth_thw)


@needs_package("unimatch")
def test_flow_image_runs_unimatch_as_this_checkout_does(tmp_path: Path):
    from unimatch.unimatch import UniMatch

    frames_thw3 = make_scene(SceneConfig(height=48, width=64, n_frames=3)).frames_thw3
    torch.manual_seed(0)
    net = UniMatch(**unimatch.model_kwargs()).eval()  # gmflow-scale2-regrefine6, random weights
    weights = tmp_path / "weights" / "gmflow-random.pth"
    weights.parent.mkdir()
    torch.save({"model": net.state_dict(), "step": 0}, weights)  # UniMatch's checkpoint format
    cfg = FlowConfig(
        backend="unimatch", unimatch_checkpoint=Path(WEIGHTS_IN_CONTAINER) / weights.name
    )
    io_dir = tmp_path / "io"
    io_dir.mkdir()
    out = run_in_image("flow", FLOW_SCRIPT, frames_thw3, cfg, weights, io_dir)
    backends = {name: available for name, available, _detail in out["backends"]}
    assert backends["unimatch"] is True
    here = compute_flow(
        frames_thw3,
        dataclasses.replace(cfg, unimatch_checkpoint=weights),
        FlowRuntime(device="cpu"),
    )
    expected = np.stack([(p.flow_fwd_hw2, p.flow_bwd_hw2) for p in here.pairs])
    np.testing.assert_array_equal(np.load(io_dir / "flow.npy"), expected)
