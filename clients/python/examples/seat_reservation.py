"""The airline seat reservation from the mailing-list thread: many processes book and
cancel seats at once, each booking a conditional append on the seat's key, and a checker
that reads the whole log and proves no seat was ever double-booked.

    python examples/seat_reservation.py --port 7878 --processes 16 --operations 500

A booking is appended only if the seat's latest record is still the one the process saw
(condition at that offset), or the seat was never touched (no_key); a cancellation only if
the process's own booking is still the latest. Two processes racing for a seat both
condition on the same offset, so exactly one append is accepted.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
import uuid

from cairn import Client, Conflict, KeyCondition, Record


def seat_key(seat: int) -> bytes:
    return f"seat-{seat:03}".encode()


def worker(host: str, port: int, topic: str, worker_id: int, seats: int, operations: int) -> int:
    """Books and cancels random seats; returns how many bookings it won."""
    generator = random.Random(worker_id)
    booked = 0
    with Client(host, port) as client:
        for _ in range(operations):
            key = seat_key(generator.randrange(seats))
            latest = client.read_key(topic, key, include_appended=True).record
            if latest is None:
                condition = KeyCondition.no_key()
            else:
                condition = KeyCondition.at(latest.offset)
            holder = None if latest is None else latest.value
            if holder is not None and holder.startswith(b"book:"):
                if holder != f"book:{worker_id}".encode():
                    continue  # someone else's seat
                value = f"cancel:{worker_id}".encode()
            else:
                value = f"book:{worker_id}".encode()
            try:
                client.append(topic, [Record(key, value, condition=condition)])
            except Conflict:
                continue  # lost the race: the seat changed since we looked
            if value.startswith(b"book:"):
                booked += 1
    return booked


def check(client: Client, topic: str) -> tuple[int, int]:
    """Reads every partition from offset 0 and replays each seat's records in order: a
    booking must come first or follow a cancellation, and a cancellation must follow the
    same process's booking. Returns (bookings, cancellations); raises AssertionError on a
    double booking."""
    info = client.metadata().topics[topic]
    bookings = cancellations = 0
    for partition in info.partitions:
        holders: dict[bytes, bytes | None] = {}
        offset = 0
        while True:
            fetched = client.fetch(topic, partition.partition, offset)
            for record in fetched.records:
                holder = holders.get(record.key)
                kind, _, who = record.value.partition(b":")
                if kind == b"book":
                    assert holder is None, (
                        f"{record.key!r} double-booked at offset {record.offset}: "
                        f"held by {holder!r}, booked by {who!r}"
                    )
                    holders[record.key] = who
                    bookings += 1
                else:
                    assert holder == who, (
                        f"{record.key!r} cancelled by {who!r} at offset {record.offset}, "
                        f"held by {holder!r}"
                    )
                    holders[record.key] = None
                    cancellations += 1
                offset = record.offset + 1
            if offset >= fetched.synced_end:
                break
    return bookings, cancellations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7878)
    parser.add_argument("--topic", default=f"seats-{uuid.uuid4().hex[:8]}")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seats", type=int, default=20)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--operations", type=int, default=200, help="per process")
    args = parser.parse_args()

    with Client(args.host, args.port) as client:
        client.create_topic(args.topic, args.partitions)
    jobs = [
        (args.host, args.port, args.topic, worker_id, args.seats, args.operations)
        for worker_id in range(args.processes)
    ]
    with multiprocessing.Pool(args.processes) as pool:
        won = sum(pool.starmap(worker, jobs))
    with Client(args.host, args.port) as client:
        bookings, cancellations = check(client, args.topic)
    assert bookings == won, f"the log has {bookings} bookings, the processes won {won}"
    print(
        f"ok: {args.processes} processes, {bookings} bookings, {cancellations} cancellations, "
        f"no seat double-booked (topic {args.topic})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
