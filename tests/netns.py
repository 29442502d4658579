"""Separate hosts for tests: Linux network namespaces on a private bridge.

`Hosts` makes a bridge in the test's own (root) namespace with address `gateway`, and one
namespace per host, joined to the bridge by a veth pair, with loopback and its own address.
Services the hosts use listen on `gateway`; from inside a namespace 127.0.0.1 is the host's
own loopback, so a process there reaches the test's services over the veth network only.

`Hosts.popen` starts a process on a host with its own hostname (a UTS namespace) and, if asked,
with folders of the test hidden under an empty tmpfs (a mount namespace), so it cannot read
another host's disk either. Needs root and iproute2; `unavailable()` says why not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import psutil


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found"
    probe = f"epprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], check=False, capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False, capture_output=True)
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Hosts:
    def __init__(self, names: Sequence[str], subnet: int | None = None) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.subnet = subnet if subnet is not None else 100 + int(self.tag, 16) % 150
        self.gateway = f"10.{self.subnet}.0.1"
        self.bridge = f"epbr{self.tag}"
        self.names = list(names)
        self.namespaces = {name: f"ep{self.tag}-{name}" for name in names}
        self.addresses = {name: f"10.{self.subnet}.0.{i + 2}" for i, name in enumerate(names)}

    def __enter__(self) -> Self:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, name in enumerate(self.names):
                ns = self.namespaces[name]
                outside, inside = f"ep{self.tag}o{i}", f"ep{self.tag}i{i}"
                _ip("netns", "add", ns)
                _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
                _ip("link", "set", outside, "master", self.bridge)
                _ip("link", "set", outside, "up")
                _ip("link", "set", inside, "netns", ns)
                _ip("-n", ns, "addr", "add", f"{self.addresses[name]}/24", "dev", inside)
                _ip("-n", ns, "link", "set", inside, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        for ns in self.namespaces.values():
            subprocess.run(
                ["ip", "netns", "del", ns], check=False, capture_output=True
            )  # takes its veth end along
        subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)

    def popen(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str],
        *,
        hide: Sequence[Path] = (),
        log: Path,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """`argv` on host `name` (hostname `name`), in a process group of its own."""
        mounts = "".join(f"mount -t tmpfs tmpfs '{path}' && " for path in hide)
        script = f"hostname '{name}' && {mounts}exec \"$@\""
        command = [
            "ip", "netns", "exec", self.namespaces[name],
            "unshare", "--uts", "--mount", "--propagation", "private",
            "sh", "-c", script, "sh", *argv,
        ]  # fmt: skip
        with open(log, "ab") as out:
            return subprocess.Popen(
                command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )


def kill_tree(proc: subprocess.Popen[bytes]) -> list[int]:
    """SIGKILL a process and every descendant at once, as a host losing power does; returns the pids."""
    try:
        victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        victims = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for victim in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()
    proc.wait(timeout=30)
    return [victim.pid for victim in victims]
