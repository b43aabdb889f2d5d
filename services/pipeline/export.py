"""Copy a run's outputs out of the store into a plain folder a person can open."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from gflow.v1 import pipeline_pb2
from services.common.artifacts import Artifacts
from services.common.codec import MEDIA_TYPE as ARRAY_MEDIA_TYPE
from services.common.store import S3Settings, StoreConfig
from services.pipeline.report import run_verdict

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
RESULT_FILE = "result.pb"
# Arrays copied out of the store as .npy, by stage (see services.fit.tracks.Tracks).
EXPORTED_ARRAYS = {"fit": ("tracks_2d", "tracks_occluded", "tracks_3d", "tracks_3d_alive")}


def export_run(
    artifacts: Artifacts, result: pipeline_pb2.PipelineResult, out: Path, store: StoreConfig
) -> Path:
    """Write the report, every non-array artifact and a summary; returns the report's path.

    summary.json holds every stage's figures and, under "verdict", the run's headline and each
    figure's verdict (services.pipeline.verdicts). Arrays (depth, flow, masks) stay in the store:
    they are large and `result.pb` refers to them; only the fit's tracks (EXPORTED_ARRAYS, small
    and what users load) are written, as `fit/<name>.npy`.
    """
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"verdict": run_verdict(artifacts, result).to_json()}
    for stage in (result.flow, result.depth, result.segment, result.fit):
        folder = out / stage.stage
        folder.mkdir(exist_ok=True)
        summary[stage.stage] = {q.name: q.value for q in stage.quality}
        for item in stage.artifacts:
            if item.ref.media_type == ARRAY_MEDIA_TYPE:
                if item.name in EXPORTED_ARRAYS.get(stage.stage, ()):
                    array = artifacts.get_array(item.ref, field=f"{stage.stage}.{item.name}")
                    np.save(folder / f"{item.name}.npy", array)
                continue
            name = Path(item.ref.key).name
            (folder / name).write_bytes(artifacts.get_bytes(item.ref))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    (out / RESULT_FILE).write_bytes(result.SerializeToString())
    (out / RUN_FILE).write_text(
        json.dumps({"store": store.url, "s3_endpoint": store.s3.endpoint}, indent=1)
    )
    report = out / "report.html"
    report.write_bytes(artifacts.get_bytes(result.report, "report"))
    log.info("outputs in %s; in the store the run is %s (for gflow view)", out, result.report.key)
    return report


def load_run(run_dir: Path) -> tuple[StoreConfig, pipeline_pb2.PipelineResult]:
    """The store and result of an exported run (secrets for S3 come from the environment)."""
    meta = json.loads((run_dir / RUN_FILE).read_text())
    store = StoreConfig(url=meta["store"], s3=S3Settings.from_env(endpoint=meta["s3_endpoint"]))
    result = pipeline_pb2.PipelineResult.FromString((run_dir / RESULT_FILE).read_bytes())
    return store, result
