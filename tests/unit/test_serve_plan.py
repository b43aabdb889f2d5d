"""`gflow serve --gpus`: which worker listens where and sees which GPU (the processes themselves
run in tests/faults/test_serve_supervision.py; the two-GPU run is in docs/deploy.md)."""

from __future__ import annotations

import pytest
import tyro

from services.common.errors import InvalidArgumentError
from services.common.runtime import DEFAULT_PORTS
from services.ops.serve import ServeCommand, plan_workers, stage_targets


def _by_name(gpus: list[str], ports: dict[str, int] = DEFAULT_PORTS) -> dict[str, tuple]:
    return {p.name: (p.stage, p.port, p.cuda_visible_devices) for p in plan_workers(ports, gpus)}


def test_without_gpus_every_worker_sees_every_gpu():
    assert _by_name([]) == {
        "depth": ("depth", 50051, None),
        "flow": ("flow", 50052, None),
        "segment": ("segment", 50053, None),
        "fit": ("fit", 50054, None),
    }
    assert stage_targets(plan_workers(DEFAULT_PORTS, []))["fit"] == "127.0.0.1:50054"


def test_each_stage_sees_its_gpus_and_fit_gets_a_worker_per_gpu():
    plans = plan_workers(DEFAULT_PORTS, ["depth=0", "flow=0", "fit=0,1"])
    assert {p.name: (p.stage, p.port, p.cuda_visible_devices) for p in plans} == {
        "depth": ("depth", 50051, "0"),
        "flow": ("flow", 50052, "0"),
        "segment": ("segment", 50053, ""),  # not named once GPUs are given: the CPU
        "fit": ("fit", 50054, "0"),
        "fit-1": ("fit", 50055, "1"),
    }
    targets = stage_targets(plans)
    assert targets["fit"] == "ipv4:127.0.0.1:50054,127.0.0.1:50055"
    assert targets["depth"] == "127.0.0.1:50051"


def test_a_gpu_list_for_another_stage_is_one_worker_seeing_them_all():
    assert _by_name(["depth=0,1"])["depth"] == ("depth", 50051, "0,1")


def test_fit_ports_that_clash_are_refused_naming_the_fix():
    ports = dict(DEFAULT_PORTS, pipeline=50055)
    with pytest.raises(InvalidArgumentError, match="--gpus.*clash.*50055.*--ports"):
        plan_workers(ports, ["fit=0,1"])


def test_the_flag_parses_on_the_command_line():
    command = tyro.cli(ServeCommand, args=["--gpus", "depth=0", "flow=0", "fit=0,1"])
    assert command.gpus == ["depth=0", "flow=0", "fit=0,1"]
    with pytest.raises(InvalidArgumentError, match="'nope'"):
        plan_workers(DEFAULT_PORTS, ["nope"])
