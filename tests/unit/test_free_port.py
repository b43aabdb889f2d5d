"""free_port: listening ports drawn outside the kernel's ephemeral range, so an outgoing
connection made before a server binds its port cannot take it (weed's filer dialled its master
from the very port picked for its listener once: "bind: address already in use")."""

from __future__ import annotations

import socket

from services.ops import seaweedfs
from services.ops.seaweedfs import LISTEN_PORTS, ephemeral_ports, free_port


def test_ports_come_from_outside_the_ephemeral_range_and_can_be_bound():
    ephemeral = ephemeral_ports()
    ports = {free_port() for _ in range(20)}
    assert len(ports) > 1
    for port in ports:
        assert port not in ephemeral and port in LISTEN_PORTS
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_busy_port_is_skipped_and_no_room_falls_back_to_the_kernel(monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        # Every port but the taken one counts as ephemeral: the one port left to draw is busy,
        # so the kernel's pick is the answer.
        monkeypatch.setattr(seaweedfs, "ephemeral_ports", lambda: set(range(65536)) - {taken})
        port = free_port()
        assert port != taken
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def _only_two_ports_to_draw(monkeypatch) -> list[int]:
    """Two free ports, made the only ones outside the 'ephemeral range' free_port draws from."""
    two_free = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            two_free.append(sock.getsockname()[1])
    monkeypatch.setattr(seaweedfs, "ephemeral_ports", lambda: set(range(65536)) - set(two_free))
    return two_free


def test_ports_to_avoid_are_never_drawn(monkeypatch):
    two_free = _only_two_ports_to_draw(monkeypatch)  # avoiding one leaves the other
    assert {free_port(avoid=[two_free[0]]) for _ in range(10)} == {two_free[1]}
    fallback = free_port(avoid=two_free)  # no room left: the kernel's pick, still not avoided
    assert fallback not in two_free


def test_weed_gets_a_port_of_its_own_for_every_listener_and_none_promised_elsewhere():
    promised = [free_port() for _ in range(5)]  # e.g. gflow serve's workers, started after weed
    for _ in range(20):
        ports = seaweedfs.weed_ports(keep_free=promised)
        assert list(ports) == list(seaweedfs.WEED_PORT_FLAGS)
        assert len(set(ports.values())) == len(ports)
        assert not set(ports.values()) & set(promised)
    given = seaweedfs.weed_ports(s3_port=promised[0], keep_free=promised[1:])
    assert given["-s3.port"] == promised[0]
    assert len(set(given.values())) == len(given)


def test_a_given_s3_port_is_not_drawn_for_weeds_other_listeners(monkeypatch):
    two_free = _only_two_ports_to_draw(monkeypatch)
    ports = seaweedfs.weed_ports(s3_port=two_free[0])
    assert ports["-master.port"] == two_free[1]  # the first drawn: the given S3 port is not free
    assert len(set(ports.values())) == len(ports)


def test_ports_drawn_together_are_all_different(monkeypatch):
    two_free = _only_two_ports_to_draw(monkeypatch)
    assert sorted(seaweedfs.free_ports(2)) == sorted(two_free)
