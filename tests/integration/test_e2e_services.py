"""End to end: one small clip embedded on a local folder, and across separate service processes
over gRPC on a real SeaweedFS S3 store (what `gflow serve` starts). Both runs must give the same
artifacts under the same keys with the same numbers, and a second run through the pipeline service
must be answered from the store.

Measured on the 2-core development machine: every array, JSON, PLY and figure of the two runs is
bit-identical (max |difference| 0, checked with both tolerances set to 0), so the tolerances
below only leave room for float summation order; figures that measure the run itself (unit s or
MiB) differ and are not compared. Wall time of this file: about 60 s there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from threadpoolctl import threadpool_limits

from gflow.v1 import common_pb2, pipeline_pb2, pipeline_pb2_grpc
from services.common import codec
from services.common.artifacts import JSON_MEDIA_TYPE, Artifacts
from services.common.client import Endpoint, open_channel
from services.common.config import to_json
from services.common.runtime import DEFAULT_PORTS
from services.common.store import LocalFolderStore, S3Settings, S3Store
from services.common.video import write_mp4
from services.fit.config import preset
from services.ops.seaweedfs import free_port
from services.ops.serve import (
    BUCKET,
    LocalServices,
    ServeCommand,
    start_local_services,
)
from services.pipeline.config import PipelineConfig
from services.pipeline.engine import STAGES, run_pipeline
from services.pipeline.export import load_run
from services.pipeline.ingest import ingest
from services.synthetic.scene import SceneConfig, make_scene
from tests.integration.ply import ply_gaussians

RTOL, ATOL = 1e-5, 1e-6
RUN_MEASUREMENT_UNITS = ("s", "MiB")  # figures about the run (time, memory), not its result


@dataclass
class Run:
    artifacts: Artifacts
    result: pipeline_pb2.PipelineResult


def _config() -> PipelineConfig:
    return PipelineConfig(fit=preset("test"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Both runs (this process and the service processes it starts) compute on one thread, so no
    parallel reduction can sum in another order. With the default threads, one CI run under heavy
    load saw the fit's cameras differ by 4e-6 at frame 1, growing to 1e-3 by frame 7 (a float32
    rounding difference amplified by the optimisation), while every other run was bit-identical.
    NumPy's BLAS too: with this process's two OpenBLAS threads against the services' one, the
    depth stage's bundle adjustment gave cameras 5e-12 apart, and the fit's depth ended up to 0.14
    apart."""
    threads = torch.get_num_threads(), cv2.getNumThreads()
    with pytest.MonkeyPatch.context() as patch, threadpool_limits(limits=1, user_api="blas"):
        for name in (
            "OMP_NUM_THREADS",
            "MKL_NUM_THREADS",
            "OPENBLAS_NUM_THREADS",
            "OPENCV_FOR_THREADS_NUM",
        ):
            patch.setenv(name, "1")
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        yield
    torch.set_num_threads(threads[0])
    cv2.setNumThreads(threads[1])


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 64x48, 8-frame synthetic clip (moving camera, one moving object) as an mp4."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    path.write_bytes(write_mp4(make_scene(SceneConfig()).frames_thw3, fps=10.0))
    return path


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """SeaweedFS and the depth, flow, segment, fit and pipeline services as processes."""
    ports = {name: free_port() for name in DEFAULT_PORTS}
    serve = ServeCommand(dir=tmp_path_factory.mktemp("serve"), s3_port=0, ports=ports)
    started = start_local_services(serve)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def embedded(clip, tmp_path_factory) -> Run:
    artifacts = Artifacts(LocalFolderStore(tmp_path_factory.mktemp("embedded") / "store"))
    config = _config()
    return Run(artifacts, run_pipeline(artifacts, ingest(artifacts, clip, config.ingest), config))


# `gflow run` in a fresh interpreter; it then says whether the run loaded torch.
_GFLOW_RUN = """
import sys
from services.cli import main
main(sys.argv[1:])
print("torch loaded:", "torch" in sys.modules)
"""


@pytest.fixture(scope="module")
def remote(clip, services: LocalServices, tmp_path_factory) -> Run:
    """`gflow run CLIP --remote-config endpoints.yaml --fit-preset test`, as its own process: a
    client whose stages all run on services never loads torch."""
    out = tmp_path_factory.mktemp("remote")
    args = [str(clip), "--out", str(out), "--remote-config", str(services.endpoints_file)]
    run = subprocess.run(
        [sys.executable, "-c", _GFLOW_RUN, "run", *args, "--fit-preset", "test"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[-1] == "torch loaded: False"
    report = out / "report.html"
    assert report.is_file() and b"<html" in report.read_bytes()[:200].lower()
    settings = S3Settings(
        endpoint=services.s3.endpoint,
        access_key=services.s3.access_key,
        secret_key=services.s3.secret_key,
    )
    return Run(Artifacts(S3Store(BUCKET, settings)), load_run(out)[1])


def _assert_same_content(
    name: str, media_type: str, embedded_data: bytes, remote_data: bytes
) -> None:
    """Numbers within tolerance for arrays, JSON and PLY files; encoded media (PNG, MP4,
    text) is checked by its key, media type and integrity only."""
    if media_type == codec.MEDIA_TYPE:
        ours = codec.decode_array(embedded_data)
        theirs = codec.decode_array(remote_data)
        assert theirs.dtype == ours.dtype and theirs.shape == ours.shape, name
        if np.issubdtype(ours.dtype, np.floating):
            np.testing.assert_allclose(theirs, ours, rtol=RTOL, atol=ATOL, err_msg=name)
        else:
            np.testing.assert_array_equal(theirs, ours, err_msg=name)
    elif media_type == JSON_MEDIA_TYPE:
        assert json.loads(remote_data) == pytest.approx(json.loads(embedded_data), RTOL, ATOL)
    elif media_type == "application/x-ply":
        ours, theirs = ply_gaussians(embedded_data), ply_gaussians(remote_data)
        assert theirs.shape == ours.shape, name
        np.testing.assert_allclose(theirs, ours, rtol=RTOL, atol=ATOL, err_msg=name)


def _figures(result: common_pb2.StageResult) -> dict[str, float]:
    return {q.name: q.value for q in result.quality if q.unit not in RUN_MEASUREMENT_UNITS}


def test_services_over_grpc_give_the_embedded_artifacts(embedded: Run, remote: Run):
    for stage in STAGES:
        ours, theirs = getattr(embedded.result, stage), getattr(remote.result, stage)
        assert theirs.key == ours.key and theirs.backend == ours.backend
        assert not ours.cached and not theirs.cached  # both runs did the work
        assert [(a.name, a.ref.key) for a in theirs.artifacts] == [
            (a.name, a.ref.key) for a in ours.artifacts
        ]
        for mine, served in zip(ours.artifacts, theirs.artifacts, strict=True):
            assert served.ref.media_type == mine.ref.media_type
            _assert_same_content(
                f"{stage}.{mine.name}",
                mine.ref.media_type,
                embedded.artifacts.get_bytes(mine.ref),
                remote.artifacts.get_bytes(served.ref),  # also checks the recorded sha256
            )
        assert _figures(theirs) == pytest.approx(_figures(ours), RTOL, ATOL, nan_ok=True)
    for run in (embedded, remote):  # a committed fit leaves no checkpoints behind
        assert run.artifacts.store.list(f"{run.result.fit.key}/checkpoints/") == []
    fit_figures = _figures(remote.result.fit)
    assert fit_figures["psnr_mean"] > 25.0  # the fit actually reconstructed the clip
    assert remote.result.report.key == embedded.result.report.key
    assert b"<html" in remote.artifacts.get_bytes(remote.result.report)[:200].lower()


def test_second_run_through_the_pipeline_service_comes_from_the_store(
    clip, services: LocalServices, remote: Run
):
    endpoints = yaml.safe_load(services.endpoints_file.read_text())
    upload = remote.artifacts.put_bytes("uploads/clip.mp4", clip.read_bytes(), "video/mp4")
    request = pipeline_pb2.RunPipelineRequest(video_file=upload, config_json=to_json(_config()))
    endpoint = Endpoint(
        target=endpoints["pipeline"], auth_token_file=Path(endpoints["remote"]["auth_token_file"])
    )
    with open_channel(endpoint) as channel:
        events = list(
            pipeline_pb2_grpc.PipelineServiceStub(channel).RunPipeline(request, timeout=120)
        )
    progressed = {e.progress.stage for e in events if e.HasField("progress")}
    assert progressed == {*STAGES, "report"}
    assert events[-1].HasField("result")
    again = events[-1].result
    assert again.video.content_hash == remote.result.video.content_hash
    for stage in STAGES:
        assert getattr(again, stage).cached, stage
        assert getattr(again, stage).key == getattr(remote.result, stage).key
    assert again.report.key == remote.result.report.key
