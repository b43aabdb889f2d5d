"""Config JSON parsing names the bad field; content keys are stable and input-sensitive; a
stage's key takes its whole algorithm config and none of its runtime (device, budgets)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from gflow.v1 import depth_pb2, fit_pb2, flow_pb2
from services.common import keys
from services.common.artifacts import Artifacts
from services.common.config import parse_config_json, runtime_from_env, to_json
from services.common.errors import InvalidArgumentError
from services.common.keys import content_key, source_digest
from services.common.stage import run_cached
from services.common.video import store_frames
from services.depth.config import DepthConfig, DepthRuntime
from services.depth.stage import depth_from_request
from services.fit.config import FitConfig, FitRuntime
from services.fit.stage import fit_from_request
from services.flow.config import FlowConfig, FlowRuntime
from services.flow.stage import flow_from_request
from services.pipeline.config import PipelineConfig, PipelineRuntime, RemoteConfig
from services.pipeline.engine import STAGES, run_pipeline
from services.segment.config import SegmentConfig
from services.synthetic.scene import SceneConfig, make_scene


@dataclass
class Inner:
    backend: Literal["dis", "raft"] = "dis"
    weights: Path | None = None
    scale: float = 1.0


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    steps: int = 3


def test_round_trip_through_json():
    config = Outer(Inner("raft", Path("/w/raft.pth"), 2.5), steps=7)
    assert parse_config_json(to_json(config), Outer) == config
    assert parse_config_json("", Outer) == Outer()


@pytest.mark.parametrize(
    "text, field_name",
    [
        ('{"stepz": 1}', "config_json.stepz"),
        ('{"steps": "many"}', "config_json.steps"),
        ('{"inner": {"backend": "flownet"}}', "config_json.inner.backend"),
        ('{"inner": 3}', "config_json.inner"),
        ("{not json", "config_json"),
    ],
)
def test_bad_fields_are_named(text, field_name):
    with pytest.raises(InvalidArgumentError) as info:
        parse_config_json(text, Outer)
    assert info.value.field == field_name


def test_content_key_is_stable_and_sensitive():
    key = content_key("flow", "dis", Outer(), ["video-hash"])
    assert key == content_key("flow", "dis", Outer(), ["video-hash"])
    assert key.startswith("flow/") and len(key) == len("flow/") + 40
    others = {
        content_key("flow", "raft", Outer(), ["video-hash"]),
        content_key("flow", "dis", Outer(steps=4), ["video-hash"]),
        content_key("flow", "dis", Outer(), ["other-video"]),
        content_key("depth", "dis", Outer(), ["video-hash"]),
    }
    assert key not in others and len(others) == 4
    # 2.0 and 2 are the same parameter value
    assert content_key("s", "b", {"x": 2.0}, []) == content_key("s", "b", {"x": 2}, [])
    assert content_key("flow", "dis", Outer(), ["video-hash"], "code-a") not in {key, *others}


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_source_digest_follows_the_imported_code(tmp_path, monkeypatch):
    """The digest changes with the module and everything it reaches by imports (also an import
    inside a function, a module named in a from-import, a package's __init__), and with nothing
    else."""
    _write(tmp_path, "services/__init__.py", "")
    _write(tmp_path, "services/a/__init__.py", "")
    _write(tmp_path, "services/a/stage.py", "import numpy\nfrom services.a import engine\n")
    _write(tmp_path, "services/a/engine.py", "def run():\n    import services.b.util\n")
    _write(tmp_path, "services/b/__init__.py", "")
    _write(tmp_path, "services/b/util.py", "from services.c.names import NAME\n")
    _write(tmp_path, "services/c/__init__.py", "")
    _write(tmp_path, "services/c/names.py", "NAME = 1\n")
    _write(tmp_path, "services/d/other.py", "X = 1\n")
    monkeypatch.setattr(keys, "SOURCE_ROOT", tmp_path)

    def digest() -> str:
        source_digest.cache_clear()
        return source_digest("services.a.stage")

    first = digest()
    assert first == digest()
    _write(tmp_path, "services/d/other.py", "X = 2\n")  # imported by nobody
    assert digest() == first
    seen = {first}
    for relative in [
        "services/a/engine.py",
        "services/b/util.py",
        "services/c/names.py",
        "services/b/__init__.py",
    ]:
        (tmp_path / relative).write_text((tmp_path / relative).read_text() + "# changed\n")
        seen.add(digest())
    assert len(seen) == 5
    source_digest.cache_clear()
    with pytest.raises(ValueError, match="services.a.missing"):
        source_digest("services.a.missing")
    source_digest.cache_clear()


def test_each_stage_digest_holds_its_engine():
    root = keys.SOURCE_ROOT
    for stage in ("flow", "depth", "segment", "fit"):
        files = keys._imported_sources(f"services.{stage}.stage")
        assert root / f"services/{stage}/engine.py" in files
        assert root / "services/pipeline/cli.py" not in files
    assert len({source_digest(f"services.{s}.stage") for s in ("flow", "fit")}) == 2


def test_a_result_of_other_code_is_computed_anew(local_store):
    """The same work under another code digest is produced again; under the same one it is
    answered from the store."""
    artifacts = Artifacts(local_store)
    produced = []

    def produce(out):
        produced.append(out.key)
        out.figure("n", len(produced))

    first = run_cached(artifacts, "flow", "dis", {"x": 1}, "video", [], produce, code="old")
    again = run_cached(artifacts, "flow", "dis", {"x": 1}, "video", [], produce, code="old")
    assert again.cached and again.key == first.key and len(produced) == 1
    upgraded = run_cached(artifacts, "flow", "dis", {"x": 1}, "video", [], produce, code="new")
    assert not upgraded.cached and upgraded.key != first.key and len(produced) == 2


# -- algorithm config vs runtime ---------------------------------------------------------------

OTHER_RUNTIME = PipelineRuntime(
    flow=FlowRuntime(device="cpu", memory_budget_gb=2.0),
    depth=DepthRuntime(device="cpu", memory_budget_gb=1.0),
    fit=FitRuntime(device="cpu", backend="torch"),
)


WEIGHTS_ENV = {
    "GFLOW_RAFT_WEIGHTS": "/weights/raft.pth",
    "GFLOW_UNIMATCH_CHECKPOINT": "/weights/unimatch.pth",
    "GFLOW_MAST3R_CHECKPOINT": "/weights/mast3r.pth",
    "GFLOW_MAST3R_TRUST_CHECKPOINT": "1",
}
"""What a depth or flow server's environment names (as the images do) for the backends with
weights; DIS flow and the offline depth read none of it."""


@pytest.mark.parametrize("change", ["runtime", "weights of other backends"])
def test_a_stage_key_does_not_change_with_the_runtime(local_store, monkeypatch, change):
    """The same clip and configs with another runtime, or with weights named for backends the
    run does not use: every stage answers from the store, under the same key."""
    artifacts = Artifacts(local_store)
    scene = make_scene(SceneConfig(height=32, width=48, n_frames=3))
    video = store_frames(artifacts, scene.frames_thw3, 10.0)
    tiny_fit = FitConfig(
        init_points=200, max_points=400, iters_first=5, iters=3, camera_iters=2, densify_max=50
    )
    config = PipelineConfig(fit=tiny_fit, track_grid=0)
    first = run_pipeline(artifacts, video, config)
    if change == "runtime":
        config = dataclasses.replace(config, runtime=OTHER_RUNTIME)
    else:
        for name, value in WEIGHTS_ENV.items():
            monkeypatch.setenv(name, value)
    again = run_pipeline(artifacts, video, config)
    for stage in STAGES:
        assert not getattr(first, stage).cached
        assert getattr(again, stage).cached
        assert getattr(again, stage).key == getattr(first, stage).key


def _changed(config):
    """(field path, config with that one leaf field changed to another valid value) for every
    leaf field, nested dataclasses included."""
    hints = typing.get_type_hints(type(config))
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value):
            for path, inner in _changed(value):
                yield f"{item.name}.{path}", dataclasses.replace(config, **{item.name: inner})
            continue
        hint = hints[item.name]
        if typing.get_origin(hint) is Literal:
            candidates = [c for c in typing.get_args(hint) if c != value]
        elif isinstance(value, bool):
            candidates = [not value]
        elif value is None:
            candidates = [Path("weights.pth") if Path in typing.get_args(hint) else 100.0]
        elif isinstance(value, int):
            candidates = [value + 1, value + 2, value * 2]
        else:
            candidates = [value * 2, value / 2, value + 1]
        for candidate in candidates:
            try:
                yield item.name, dataclasses.replace(config, **{item.name: candidate})
                break
            except InvalidArgumentError:
                continue
        else:
            raise AssertionError(f"no valid other value for {item.name}")


@pytest.mark.parametrize(
    "config", [FlowConfig(), DepthConfig(), SegmentConfig(), FitConfig()], ids=type
)
def test_every_algorithm_field_changes_the_key(config):
    base = content_key("stage", "backend", config, ["video"])
    keys = {path: content_key("stage", "backend", c, ["video"]) for path, c in _changed(config)}
    assert len(keys) >= len(dataclasses.fields(config))
    assert base not in keys.values() and len(set(keys.values())) == len(keys)


@pytest.mark.parametrize("runtime_type", [FlowRuntime, DepthRuntime, FitRuntime])
def test_no_runtime_field_is_an_algorithm_field(runtime_type):
    algorithm = {FlowRuntime: FlowConfig, DepthRuntime: DepthConfig, FitRuntime: FitConfig}
    runtime_names = {f.name for f in dataclasses.fields(runtime_type)}
    algorithm_names = {f.name for f in dataclasses.fields(algorithm[runtime_type])}
    assert not runtime_names & algorithm_names - {"backend"}  # flow's backend is its method
    assert "device" in runtime_names and "device" not in algorithm_names


@pytest.mark.parametrize(
    ("text", "config_type", "field_name"),
    [
        ('{"lr": 0}', FitConfig, "config_json.lr"),
        ('{"window": 2}', DepthConfig, "config_json.window"),
        ('{"extra_stride": 1}', FlowConfig, "config_json.extra_stride"),
        ('{"device": "tpu"}', FlowRuntime, "config_json.device"),
        ('{"memory_budget_gb": -1}', DepthRuntime, "config_json.memory_budget_gb"),
        ('{"backend": "vulkan"}', FitRuntime, "config_json.backend"),
        ('{"fit": {"lr": 0}}', PipelineConfig, "config_json.fit.lr"),
        (
            '{"runtime": {"fit": {"device": "tpu"}}}',
            PipelineConfig,
            "config_json.runtime.fit.device",
        ),
        ('{"flow": {"extra_stride": 2}}', PipelineConfig, "config_json.flow.extra_stride"),
    ],
)
def test_a_bad_value_is_named_once_by_its_full_path(text, config_type, field_name):
    """__post_init__ refuses it as the object is made; from_dict prefixes the path once."""
    with pytest.raises(InvalidArgumentError) as info:
        parse_config_json(text, config_type)
    assert info.value.field == field_name
    assert str(info.value).startswith(f"{field_name}: ")
    assert str(info.value).count(field_name.rsplit(".", 1)[-1]) == 1


@pytest.mark.parametrize(
    ("call", "request_type", "text", "variable"),
    [
        (flow_from_request, flow_pb2.ComputeFlowRequest, '{"device": "cpu"}', "GFLOW_FLOW_DEVICE"),
        (
            depth_from_request,
            depth_pb2.EstimateDepthRequest,
            '{"memory_budget_gb": 4}',
            "GFLOW_DEPTH_MEMORY_BUDGET_GB",
        ),
        (fit_from_request, fit_pb2.FitRequest, '{"backend": "torch"}', "GFLOW_FIT_BACKEND"),
    ],
)
def test_a_request_naming_a_runtime_field_is_refused(call, request_type, text, variable):
    """A request says what to compute; how is the server's, set by its operator."""
    with pytest.raises(InvalidArgumentError) as info:
        call(None, request_type(config_json=text))  # refused before anything is read
    name = text.split('"')[1]
    assert info.value.field == f"config_json.{name}"
    assert variable in info.value.description


def test_a_server_takes_its_runtime_from_its_environment(monkeypatch):
    monkeypatch.setenv("GFLOW_FLOW_DEVICE", "cuda:1")
    monkeypatch.setenv("GFLOW_FLOW_MEMORY_BUDGET_GB", "12")
    monkeypatch.setenv("GFLOW_DEPTH_MEMORY_BUDGET_GB", "null")
    assert runtime_from_env(FlowRuntime, "flow") == FlowRuntime("cuda:1", 12.0)
    assert runtime_from_env(DepthRuntime, "depth") == DepthRuntime()
    assert runtime_from_env(FitRuntime, "fit") == FitRuntime()
    monkeypatch.setenv("GFLOW_FIT_BACKEND", "vulkan")
    with pytest.raises(InvalidArgumentError) as info:
        runtime_from_env(FitRuntime, "fit")
    assert info.value.field == "GFLOW_FIT_BACKEND"


def test_a_remote_stage_refuses_a_runtime_of_this_process():
    remote = RemoteConfig(fit="gpu-host:50054")
    PipelineConfig(remote=remote, runtime=PipelineRuntime(flow=FlowRuntime(device="cpu")))
    with pytest.raises(InvalidArgumentError) as info:
        PipelineConfig(remote=remote, runtime=PipelineRuntime(fit=FitRuntime(device="cpu")))
    assert info.value.field == "runtime.fit"
    assert "gpu-host:50054" in str(info.value) and "GFLOW_FIT_DEVICE" in str(info.value)
