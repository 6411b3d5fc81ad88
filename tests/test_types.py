"""framework.types.new_id: invocation and event ids are random UUIDs, unique, unguessable from one another,
and never repeated by a forked child (DESIGN.md section 10)."""

from __future__ import annotations

import itertools
import os
import uuid

from framework.types import new_id


def test_ids_are_random_version_4_uuids() -> None:
    ids = [new_id() for _ in range(20_000)]  # several refills of the random pool
    assert len(set(ids)) == len(ids)
    for value in ids[::997]:
        parsed = uuid.UUID(value)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == value
    # A counter would make neighbours differ in a few low bits; random ids differ in about half of 122.
    diffs = [bin(uuid.UUID(a).int ^ uuid.UUID(b).int).count("1") for a, b in itertools.pairwise(ids)]
    assert min(diffs) > 20 and 50 < sum(diffs) / len(diffs) < 72


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    """1. Draw an id (the pool now holds unused bytes). 2. Fork; the child draws one and sends it back.
    3. The parent draws its next one.
    Result: the two differ: the child's pool was emptied at the fork."""
    new_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert uuid.UUID(child).version == 4
    assert child != new_id()
