"""Finding 8: the pipeline service answers cached work without a job slot. Before the fix every
RunPipeline took the service's one slot for its whole length, so of 20 concurrent runs of a
finished clip all but one were refused with RESOURCE_EXHAUSTED."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from gflow.v1 import pipeline_pb2
from services.common.config import to_json
from services.pipeline.config import PipelineConfig
from tests.faults.clips import lean_fit, stored_clip

CONCURRENT_RUNS = 20


def _run(stub, request) -> tuple[pipeline_pb2.PipelineResult | grpc.StatusCode, float]:
    started = time.monotonic()
    try:
        events = list(stub.RunPipeline(request, timeout=300))
    except grpc.RpcError as err:
        return err.code(), time.monotonic() - started
    return events[-1].result, time.monotonic() - started


def _request(artifacts, seed: int) -> pipeline_pb2.RunPipelineRequest:
    config = PipelineConfig(fit=lean_fit(), track_grid=0)
    return pipeline_pb2.RunPipelineRequest(
        video=stored_clip(artifacts, seed), config_json=to_json(config)
    )


def _keys(result: pipeline_pb2.PipelineResult) -> list[str]:
    return [s.key for s in (result.flow, result.depth, result.segment, result.fit)]


def test_20_concurrent_cached_runs_all_answered(pipeline):
    artifacts, stub = pipeline
    request = _request(artifacts, 8)
    first, _ = _run(stub, request)
    assert isinstance(first, pipeline_pb2.PipelineResult), first
    with ThreadPoolExecutor(CONCURRENT_RUNS) as pool:
        outcomes = list(pool.map(lambda _: _run(stub, request), range(CONCURRENT_RUNS)))
    refused = [o for o, _ in outcomes if not isinstance(o, pipeline_pb2.PipelineResult)]
    assert refused == []
    for result, _ in outcomes:
        stages = (result.flow, result.depth, result.segment, result.fit)
        assert all(s.cached for s in stages)
        assert [s.key for s in stages] == [
            s.key for s in (first.flow, first.depth, first.segment, first.fit)
        ]
    seconds = [s for _, s in outcomes]
    print(f"{CONCURRENT_RUNS} concurrent cached runs: p95 {np.percentile(seconds, 95):.2f} s")


@pytest.mark.parametrize("pipeline", [3], indirect=True)
def test_concurrent_runs_of_the_same_and_of_another_clip(pipeline):
    """Two runs of one clip and one of another at once: all complete, and each stage of the
    shared clip is computed once (whichever run reaches it first does it; the other waits for
    it and is answered from the store), so both runs of it name the same stored results."""
    artifacts, stub = pipeline
    requests = [_request(artifacts, 9), _request(artifacts, 9), _request(artifacts, 10)]
    with ThreadPoolExecutor(len(requests)) as pool:
        (same_a, _), (same_b, _), (other, _) = pool.map(lambda r: _run(stub, r), requests)
    for result in (same_a, same_b, other):
        assert isinstance(result, pipeline_pb2.PipelineResult), result
    assert _keys(same_a) == _keys(same_b) != _keys(other)
    assert sorted([same_a.fit.cached, same_b.fit.cached]) == [False, True]
    assert not other.fit.cached
