"""The seat reservation example: a short race, then its checker over the log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cairn import Client, Record
from conftest import Server

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = PACKAGE_ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))

import seat_reservation  # noqa: E402


def test_the_race_books_no_seat_twice(server: Server, topic: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "seat_reservation.py"),
            "--port",
            str(server.port),
            "--topic",
            topic,
            "--processes",
            "6",
            "--operations",
            "60",
            "--seats",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        # The package under test, installed or not.
        env={**os.environ, "PYTHONPATH": str(PACKAGE_ROOT / "src")},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 6 processes")


def test_the_checker_catches_a_double_booking(server: Server, topic: str) -> None:
    with Client(server.host, server.port) as client:
        client.create_topic(topic, 1)
        client.append(topic, [Record(b"seat-001", b"book:1"), Record(b"seat-001", b"book:2")])
        with pytest.raises(AssertionError, match="double-booked"):
            seat_reservation.check(client, topic)
