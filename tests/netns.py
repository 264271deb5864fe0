"""Separate hosts on one machine: Linux network namespaces on a private bridge.

:func:`private_network` makes ``count`` namespaces, each with an address of its own on a
fresh ``10.a.b.0/24``, joined by a bridge in the root namespace, which has the network's
first address (the *hub*: a database or an upstream listening there is reachable from
every host, and every host's address is reachable from here). A process started through
:meth:`Host.launcher` runs on that host: it has its own loopback, ports and address, and
reaches the others only across the network.

Names are unique per call (a random token), every command is bounded in time, and
everything made is removed on the way out, failure or not. Processes started in a
namespace must be stopped (by their PID) before the network is removed.

Where namespaces cannot be made (not root, no ``ip``, or the kernel refuses), the
network falls back to loopback: every host is 127.0.0.1, ``separate`` is False and
``reason`` says why, so that a test can skip what needs separate hosts and still run the
rest on plain processes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

IP_TIMEOUT_S = 10.0
SUBNET_TRIES = 20


class NamespaceError(RuntimeError):
    """An ``ip`` command failed; the message has its output."""


@dataclass(frozen=True)
class Host:
    """One host of the network: its namespace ('' on the loopback fall-back) and address."""

    namespace: str
    address: str

    @property
    def launcher(self) -> tuple[str, ...]:
        """What goes in front of a command to run it on this host (``ip netns exec``
        execs the command: the process's PID is the command's own)."""
        return ("ip", "netns", "exec", self.namespace) if self.namespace else ()


@dataclass(frozen=True)
class Network:
    """The hosts, the hub's address (the root namespace's, on the same network), the
    network in CIDR form, and whether the hosts are really separate (if not, why)."""

    hub: str
    hosts: tuple[Host, ...]
    cidr: str
    separate: bool
    reason: str = ""


def _ip(*args: str) -> str:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True,
                              timeout=IP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NamespaceError(f"ip {' '.join(args)}: {exc}") from exc
    if done.returncode != 0:
        raise NamespaceError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def unavailable() -> str | None:
    """Why namespaces cannot be made here, if that is known without trying."""
    if os.geteuid() != 0:
        return "network namespaces need root (the tests run as an ordinary user)"
    if shutil.which("ip") is None:
        return "network namespaces need iproute2's 'ip' command, which is not installed"
    return None


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.a.b.0/24 that no address or route of this machine overlaps."""
    used: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for word in (_ip("-4", "route", "show", "table", "all") + _ip("-4", "-o", "addr")).split():
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(word, strict=False))
    for _ in range(SUBNET_TRIES):
        subnet = ipaddress.IPv4Network(
            f"10.{random.randint(100, 199)}.{random.randint(0, 255)}.0/24"
        )
        if not any(other.version == 4 and subnet.overlaps(other) for other in used):
            return subnet
    raise NamespaceError(f"no free 10.x.y.0/24 found in {SUBNET_TRIES} tries")


@contextlib.contextmanager
def private_network(count: int) -> Iterator[Network]:
    """``count`` hosts on a private network (or on loopback, where namespaces cannot be
    made: see the module's docstring)."""
    reason = unavailable()
    if reason is not None:
        yield _loopback(count, reason)
        return
    token = secrets.token_hex(3)
    bridge = f"wfb{token}"
    namespaces: list[str] = []
    made_bridge = False
    try:
        try:
            subnet = _free_subnet()
            first, *rest = list(subnet.hosts())
            hub = str(first)
            _ip("link", "add", bridge, "type", "bridge")
            made_bridge = True
            _ip("addr", "add", f"{hub}/{subnet.prefixlen}", "dev", bridge)
            _ip("link", "set", bridge, "up")
            hosts = []
            for i in range(count):
                namespace = f"wattfare-{token}-{i}"
                _ip("netns", "add", namespace)
                namespaces.append(namespace)
                outside, inside = f"wfv{token}{i}", f"wfp{token}{i}"
                address = str(rest[9 + i])  # .11, .12, …
                _ip("link", "add", outside, "type", "veth", "peer", "name", inside,
                    "netns", namespace)
                _ip("link", "set", outside, "master", bridge, "up")
                _ip("-n", namespace, "addr", "add", f"{address}/{subnet.prefixlen}",
                    "dev", inside)
                _ip("-n", namespace, "link", "set", inside, "up")
                _ip("-n", namespace, "link", "set", "lo", "up")
                hosts.append(Host(namespace=namespace, address=address))
        except NamespaceError as exc:
            # Refused by the kernel (a container without CAP_NET_ADMIN, say): loopback.
            network = _loopback(count, f"network namespaces could not be made: {exc}")
        else:
            network = Network(hub=hub, hosts=tuple(hosts), cidr=str(subnet), separate=True)
        yield network
    finally:
        for i, namespace in enumerate(namespaces):
            with contextlib.suppress(NamespaceError):
                _ip("netns", "delete", namespace)
            with contextlib.suppress(NamespaceError):  # gone with the namespace, usually
                _ip("link", "delete", f"wfv{token}{i}")
        if made_bridge:
            with contextlib.suppress(NamespaceError):
                _ip("link", "delete", bridge)


def _loopback(count: int, reason: str) -> Network:
    return Network(hub="127.0.0.1", hosts=tuple(Host("", "127.0.0.1") for _ in range(count)),
                   cidr="127.0.0.0/8", separate=False, reason=reason)
