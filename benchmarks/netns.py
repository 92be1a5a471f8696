"""Separate hosts on one machine: network namespaces joined by a bridge, for the fleet
bench.

Each host is a namespace with its own loopback and one veth whose other end sits on a
bridge inside a hub namespace, with an address of 10.201.0.0/24. Nothing is added to
the machine's own namespace, so traffic stays between these hosts. ``Hosts`` removes
everything it made when it closes, and removes what an earlier run left (a run killed
before it could clean up) when it opens. Needs root (``ip netns``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator

PREFIX = "wai-"
HUB = f"{PREFIX}hub"
SUBNET = "10.201.0"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _leftovers() -> list[str]:
    listed = _ip("netns", "list", check=False).stdout.split("\n")
    return [line.split()[0] for line in listed if line.startswith(PREFIX)]


def pids_in(namespace: str) -> list[int]:
    out = _ip("netns", "pids", namespace, check=False).stdout
    return [int(p) for p in out.split()]


def kill_all_in(namespace: str) -> None:
    for pid in pids_in(namespace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove_all() -> None:
    for namespace in _leftovers():
        kill_all_in(namespace)
        _ip("netns", "del", namespace, check=False)


class Hosts:
    """``hosts.add("w0")`` -> its address; ``hosts.command("w0", [...])`` runs in it."""

    def __init__(self) -> None:
        self.addresses: dict[str, str] = {}
        self.extra_addresses: dict[str, list[str]] = {}

    def __enter__(self) -> Hosts:
        if os.geteuid() != 0:
            raise PermissionError("network namespaces need root")
        remove_all()
        _ip("netns", "add", HUB)
        _ip("-n", HUB, "link", "add", "br0", "type", "bridge")
        _ip("-n", HUB, "link", "set", "br0", "up")
        _ip("-n", HUB, "link", "set", "lo", "up")
        return self

    def __exit__(self, *exc: object) -> None:
        remove_all()

    def add(self, name: str, extra: int = 0) -> str:
        """A host, with ``extra`` more addresses of its own (``extra_addresses``)."""
        namespace = f"{PREFIX}{name}"
        address = f"{SUBNET}.{len(self.addresses) + 2}"
        inner, outer = f"v{len(self.addresses)}", f"b{len(self.addresses)}"
        _ip("netns", "add", namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("-n", HUB, "link", "add", outer, "type", "veth", "peer", "name", inner,
            "netns", namespace)
        _ip("-n", HUB, "link", "set", outer, "master", "br0", "up")
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", inner)
        _ip("-n", namespace, "link", "set", inner, "up")
        self.addresses[name] = address
        for k in range(extra):
            more = f"{SUBNET}.{200 + len(self.addresses) * 10 + k}"
            _ip("-n", namespace, "addr", "add", f"{more}/24", "dev", inner)
            self.extra_addresses.setdefault(name, []).append(more)
        return address

    def command(self, name: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", f"{PREFIX}{name}", *argv]

    def pids(self, name: str) -> list[int]:
        return pids_in(f"{PREFIX}{name}")

    def kill(self, name: str) -> None:
        """SIGKILL every process of the host at once: the host dies."""
        kill_all_in(f"{PREFIX}{name}")


@contextlib.contextmanager
def hosts() -> Iterator[Hosts]:
    with Hosts() as made:
        yield made
