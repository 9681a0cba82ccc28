"""A real `cairn serve` per test: a fresh temp data directory, free ports, readiness from
the "listening on ADDR shard_ports=P,Q" line the server prints first."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]


def cairn_bin() -> str:
    return os.environ.get("CAIRN_BIN", str(REPO_ROOT / "target" / "debug" / "cairn"))


@dataclass
class Server:
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    port: int = 0
    shard_ports: tuple[int, ...] = ()

    def start(self, port: int = 0) -> None:
        """Starts on `port` (0: a free one; a restart passes the previous one)."""
        self.process = subprocess.Popen(
            [
                cairn_bin(),
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--listen",
                f"127.0.0.1:{port}",
                "--no-kafka",
                "--cores",
                "2",
                "--no-pin",
                # Small preallocated segments: the default 256 MiB per shard adds up fast.
                "--segment-size",
                "2101248",
                "--log-level",
                "warn",
            ],
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        assert line.startswith("listening on "), f"unexpected first line {line!r}"
        address, _, ports = line.removeprefix("listening on ").partition(" shard_ports=")
        self.port = int(address.rsplit(":", 1)[1])
        self.shard_ports = tuple(int(p) for p in ports.split(" ")[0].split(",") if p)

    def kill(self) -> None:
        """SIGKILL: a crash."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
            self.process = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path / "data")
    running.start()
    yield running
    running.stop()


@pytest.fixture
def topic() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"
