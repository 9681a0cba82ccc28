"""The key hash: the schema's check values, and the Rust implementation on random keys."""

from __future__ import annotations

import random
import subprocess

from cairn import Client, murmur2, partition_for_key
from conftest import Server, cairn_bin


def test_schema_check_values() -> None:
    assert murmur2(b"") == 0x106E08D9
    assert murmur2(b"123456789") == 0x9362DE66
    assert partition_for_key(b"123456789", 10) == 6
    assert murmur2(b"21") == 0xC5F2F8EC


def test_matches_the_rust_client_on_random_keys(server: Server, topic: str) -> None:
    partition_count = 37
    with Client(server.host, server.port) as client:
        client.create_topic(topic, partition_count)
    generator = random.Random(13)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-_:/ éß€😀"
    keys = [
        "".join(generator.choice(alphabet) for _ in range(generator.randrange(1, 40)))
        for _ in range(40)
    ]
    for key in keys:
        rust = subprocess.run(
            [cairn_bin(), "partition-of", "--addr", f"{server.host}:{server.port}", "--", topic, key],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        assert int(rust) == partition_for_key(key.encode(), partition_count), key
