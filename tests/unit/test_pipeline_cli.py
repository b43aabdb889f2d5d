"""`gflow run` flags together: the endpoints file of `--remote-config FILE` with the command's
flags, and `--fit-preset` with `--pipeline.fit.*` flags."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import tyro
import yaml

from services.common.errors import InvalidArgumentError
from services.depth.config import DepthConfig
from services.fit.config import FitConfig, preset
from services.flow.config import FlowConfig
from services.pipeline.cli import RunCommand, _store_and_remote, run_config
from services.pipeline.config import PipelineConfig, RemoteConfig, with_fit_preset


def _endpoints(tmp_path: Path, remote: dict) -> Path:
    (tmp_path / "access").write_text("access-key\n")
    (tmp_path / "secret").write_text("secret-key\n")
    path = tmp_path / "endpoints.yaml"
    store = {
        "url": "s3://gflow",
        "endpoint": "127.0.0.1:9000",
        "access_key_file": str(tmp_path / "access"),
        "secret_key_file": str(tmp_path / "secret"),
    }
    path.write_text(yaml.safe_dump({"remote": remote, "store": store}))
    return path


def _command(endpoints: Path, **remote_flags) -> RunCommand:
    pipeline = PipelineConfig(remote=RemoteConfig(**remote_flags))
    return RunCommand(video=Path("clip.mp4"), remote_config=endpoints, pipeline=pipeline)


def test_file_keys_win_and_flags_give_the_rest(tmp_path):
    endpoints = _endpoints(tmp_path, {"flow": "10.0.0.2:50052", "retry_factor": 3.0})
    command = _command(endpoints, flow="127.0.0.1:1", retry_attempts=2, retry_factor=1.5)
    store, remote = _store_and_remote(command)
    assert (remote.flow, remote.retry_factor) == ("10.0.0.2:50052", 3.0)  # from the file
    assert remote.retry_attempts == 2  # from the flag
    assert dataclasses.replace(remote, flow="", retry_factor=2.0, retry_attempts=6) == (
        RemoteConfig()
    )
    assert (store.url, store.s3.access_key, store.s3.secret_key) == (
        "s3://gflow",
        "access-key",
        "secret-key",
    )


def test_unknown_or_bad_file_keys_are_named(tmp_path):
    with pytest.raises(InvalidArgumentError, match="remote_config.remote.retry_count"):
        _store_and_remote(_command(_endpoints(tmp_path, {"retry_count": 3})))
    with pytest.raises(InvalidArgumentError, match="remote.retry_attempts"):
        _store_and_remote(_command(_endpoints(tmp_path, {"retry_attempts": 0})))


# Imports `gflow` (services.cli, which also holds the synth, lab and serve commands), the
# modules a remote-only run calls and the pipeline service, then lists what must not have loaded.
_IMPORT_THE_CLI = """
import sys
import services.cli, services.pipeline.engine, services.pipeline.export, services.pipeline.report
import services.pipeline.server
stages = ("depth", "flow", "segment", "fit")
print(sorted(m for m in sys.modules if m == "torch" or m.split(".")[:1] == ["torch"]
             or m in [f"services.{s}.{p}" for s in stages for p in ("stage", "engine")]))
"""


def test_the_cli_and_a_remote_run_load_no_engine_and_no_torch():
    """A `gflow run --remote-config` client (and the pipeline service) runs no stage, so neither
    the stage engines nor torch load (stage modules load in one place,
    pipeline.engine._local_stage, on an embedded call). tests/integration/test_e2e_services.py
    checks a whole remote run the same way."""
    loaded = subprocess.run(
        [sys.executable, "-c", _IMPORT_THE_CLI], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def test_fit_flags_given_with_a_preset_apply_on_top_of_it():
    args = ["clip.mp4", "--fit-preset", "fast", "--pipeline.fit.track-motion", "local_rigid"]
    command = tyro.cli(RunCommand, args=[*args, "--pipeline.fit.iters", "120"])
    fit = with_fit_preset(command.pipeline, command.fit_preset).fit
    assert fit == dataclasses.replace(preset("fast"), track_motion="local_rigid", iters=120)
    assert with_fit_preset(PipelineConfig(), "fast").fit == preset("fast")
    assert with_fit_preset(command.pipeline, None) is command.pipeline


def test_best_tracks_is_the_defaults_with_adams_moments_and_more_polish_whatever_the_flags():
    """--best-tracks sets what the recipe's twelve flags set (README, docs/fit.md): nine restate
    the defaults, Adam's kept moments and three polish rounds on smaller windows are the opt-ins;
    a fit preset and other flags stay under it, and a flag that turns one of the recipe's
    defaults off is overruled."""
    recipe = [
        "--pipeline.flow.dis-polish",
        "--pipeline.flow.dis-polish-rounds",
        "3",
        "--pipeline.flow.dis-polish-window-px",
        "1",
        "--pipeline.two-pass-depth",
        "--pipeline.depth.offline-bundle-adjust",
        "--pipeline.segment.measured-depth-only",
        "--pipeline.fit.occlusion-from-frames",
        "--pipeline.fit.occlusion-from-flow-where-unmeasured",
        "--pipeline.fit.tracks-with-flow-chain",
        "--pipeline.fit.camera-from-prior-poses",
        "--pipeline.fit.no-moving-depth-from-filled-prior",
        "--pipeline.fit.keep-adam-state",
    ]
    by_flags = run_config(tyro.cli(RunCommand, args=["clip.mp4", *recipe]), RemoteConfig())
    best = run_config(tyro.cli(RunCommand, args=["clip.mp4", "--best-tracks"]), RemoteConfig())
    assert best == by_flags and best.warnings() == []
    kept_moments = dataclasses.replace(FitConfig(), keep_adam_state=True)
    more_polish = dataclasses.replace(FlowConfig(), dis_polish_rounds=3, dis_polish_window_px=1.0)
    assert best == dataclasses.replace(PipelineConfig(), fit=kept_moments, flow=more_polish)
    off = ["--pipeline.flow.no-dis-polish", "--pipeline.no-two-pass-depth", "--best-tracks"]
    assert run_config(tyro.cli(RunCommand, args=["clip.mp4", *off]), RemoteConfig()) == best
    args = ["clip.mp4", "--best-tracks", "--fit-preset", "fast", "--pipeline.fit.iters", "120"]
    config = run_config(tyro.cli(RunCommand, args=[*args, "--track-grid", "4"]), RemoteConfig())
    assert config.track_grid == 4 and config.flow.dis_preset == best.flow.dis_preset
    assert config.fit == dataclasses.replace(preset("fast"), iters=120, keep_adam_state=True)
    assert run_config(tyro.cli(RunCommand, args=["clip.mp4"]), RemoteConfig()) == PipelineConfig()


def test_keeping_the_offline_chained_poses_as_cameras_is_warned_about():
    assert PipelineConfig().fit.camera_from_prior_poses and PipelineConfig().warnings() == []
    chained = DepthConfig(offline_bundle_adjust=False)
    own = FitConfig(camera_from_prior_poses=False)
    assert PipelineConfig(fit=own, depth=chained).warnings() == []
    assert PipelineConfig(depth=DepthConfig(backend="mast3r")).warnings() == []
    (warning,) = PipelineConfig(depth=chained).warnings()
    assert "--pipeline.depth.offline-bundle-adjust" in warning
    assert "--pipeline.fit.no-camera-from-prior-poses" in warning


def test_the_second_depth_pass_runs_only_with_a_backend_that_reads_the_masks():
    assert PipelineConfig().second_depth_pass
    assert not PipelineConfig(two_pass_depth=False).second_depth_pass
    mast3r = PipelineConfig(depth=DepthConfig(backend="mast3r"))
    assert mast3r.two_pass_depth and not mast3r.second_depth_pass and mast3r.warnings() == []


def test_the_fit_reads_its_chain_along_the_neighbours_flow_only_after_dis():
    """PipelineConfig.fit_config: the fit stage's config, with the track readout's neighbour flow
    (FitConfig.tracks_chain_neighbour_px) left as given after the DIS flow and off after a
    learned flow, whose outlines are sharp already, or after a flow stage that took the
    neighbours' flow itself; every other field as `fit` says."""
    config = PipelineConfig(fit=dataclasses.replace(FitConfig(), iters=7))
    assert config.fit_config() == config.fit
    assert config.fit_config().tracks_chain_neighbour_px == 4
    for backend in ("raft", "unimatch"):
        learned = dataclasses.replace(
            config, flow=dataclasses.replace(FlowConfig(), backend=backend)
        )
        assert learned.fit_config() == dataclasses.replace(config.fit, tracks_chain_neighbour_px=0)
    taken = dataclasses.replace(config, flow=FlowConfig(dis_neighbour_px=4))
    assert taken.fit_config() == dataclasses.replace(config.fit, tracks_chain_neighbour_px=0)
