"""The multi-host tests' network (:mod:`tests.netns`): hosts that are separate, gone
afterwards whatever happened, and a loopback fall-back that says why."""

from __future__ import annotations

import ipaddress
import os
import subprocess

import pytest
from netns import Network, private_network, unavailable


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          timeout=10, check=True).stdout


def _links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=10,
                          check=True).stdout


@pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
def test_each_host_has_its_own_address_and_nothing_is_left_afterwards() -> None:
    class Boom(Exception):
        pass

    seen: list[Network] = []
    with pytest.raises(Boom), private_network(2) as net:  # noqa: PT012 (the block fails)
        seen.append(net)
        assert net.separate, net.reason
        subnet = ipaddress.ip_network(net.cidr)
        addresses = [host.address for host in net.hosts]
        assert len(set(addresses)) == 2
        assert all(ipaddress.ip_address(a) in subnet for a in [net.hub, *addresses])
        for host, other in zip(net.hosts, reversed(net.hosts), strict=True):
            inside = subprocess.run([*host.launcher, "ip", "-4", "-o", "addr"],
                                    capture_output=True, text=True, timeout=10, check=True)
            assert f" {host.address}/" in inside.stdout
            assert f" {other.address}/" not in inside.stdout
            reach = subprocess.run([*host.launcher, "ip", "route", "get", net.hub],
                                   capture_output=True, text=True, timeout=10, check=True)
            assert f"src {host.address}" in reach.stdout
        raise Boom
    [net] = seen
    assert all(host.namespace not in _namespaces() for host in net.hosts)
    assert f" {net.hub}/" not in subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True,
                                                text=True, timeout=10, check=True).stdout
    token = net.hosts[0].namespace.split("-")[1]
    assert token not in _links()


def test_without_namespaces_the_hosts_are_loopback_and_say_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with private_network(3) as net:
        assert not net.separate
        assert "root" in net.reason
        assert [h.address for h in net.hosts] == ["127.0.0.1"] * 3
        assert all(h.launcher == () for h in net.hosts) and net.hub == "127.0.0.1"
