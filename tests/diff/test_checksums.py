"""The canonical form of a group and its checksums: key-space buckets, unambiguous lines,
every backend summing exactly like the Python reference."""

from __future__ import annotations

import datetime as dt
import hashlib

from shadowdb import diff, models
from shadowdb.databases import reader
from shadowdb.diff import Copy, Differ, bucket_of, canonical_lines
from shadowdb.diff.checksums import digest, norm
from shadowdb.queries import API
from tests.conftest import Topology
from tests.support.helpers import NOW, new_uuid, seed_api_group


def test_bucket_of_splits_the_key_space_in_order() -> None:
    assert bucket_of("00000000-0000-4000-8000-000000000000", 16) == 0
    assert bucket_of("0fffffff-0000-4000-8000-000000000000", 16) == 0
    assert bucket_of("10000000-0000-4000-8000-000000000000", 16) == 1
    assert bucket_of("ffffffff-ffff-4fff-bfff-ffffffffffff", 16) == 15
    assert bucket_of("ffffffff", 1) == 0
    # Anything else shares the extra chunk n: uppercase, short, not hex.
    assert bucket_of("ABCDEF01-0000-4000-8000-000000000000", 16) == 16
    assert bucket_of("abc", 16) == 16
    assert bucket_of("g0000000-0000", 16) == 16


def test_canonical_lines_are_unambiguous() -> None:
    one = Copy("u", "ab", "c", None, None, (), ())
    two = Copy("u", "a", "bc", None, None, (), ())
    empty = Copy("u", "", None, None, None, (), ())
    null = Copy("u", None, None, None, None, (), ())
    lines = {canonical_lines(c)[0] for c in (one, two, empty, null)}
    assert len(lines) == 4
    stamped = Copy("u", None, None, None, dt.datetime(999, 1, 2, 3, 4, 5), ("affinity",), ("m",))
    assert canonical_lines(stamped) == [
        "g1:u~~~19:0999-01-02 03:04:05",
        "p1:u8:affinity",
        "m1:u1:m",
    ]


def test_a_row_hashes_to_the_first_64_bits_of_its_md5_summed_modulo_2_64() -> None:
    line = "m1:u1:m"
    assert digest(line) == int(hashlib.md5(line.encode()).hexdigest()[:16], 16)
    assert 0 <= digest("g" + "x" * 10_000) < 2**64
    # Tallies are compared modulo 2**64, whatever sign or carry the servers' sums had.
    assert norm([1, 2, 3, 2**64 + 5]) == norm([1, 2, 3, 5]) == (1, 2, 3, 5)
    assert norm([1, 2, 3, -1]) == (1, 2, 3, 2**64 - 1)


def test_each_backend_checksums_exactly_like_the_python_reference(topology: Topology) -> None:
    """The SQL of each backend and the Python streaming code agree on tricky rows."""
    odd = [
        ("ABCDEF01-0000-4000-8000-000000000000", "Upper", dt.datetime(2026, 1, 2, 3, 4, 5)),
        ("short", "é ünïcode ✓", dt.datetime(2026, 1, 2, 3, 4, 5, 999999)),
        (new_uuid(), "  spaced  ", dt.datetime(1999, 12, 31, 23, 59, 59)),
        (new_uuid(), "a:b~c", None),
        (new_uuid(), "", NOW),
        # Heads that are not eight lowercase hex digits, however a backend tests it.
        ("0000000g-0000-4000-8000-000000000000", "hex but one", NOW),
        ("éééééééé-0000", "eight characters, sixteen bytes", NOW),
        ("abcdef0", "seven hex digits", NOW),
        ("0123456789abcdef", "hex beyond the head", NOW),
    ]
    for uuid, name, created in odd:
        seed_api_group(topology.dbs.api, uuid=uuid, name=name, members=[new_uuid()], created_at=NOW)
        with topology.dbs.api.begin() as conn:
            conn.execute(
                models.api_groups.update()
                .where(models.api_groups.c.uuid == uuid)
                .values(created_at=created, user_id=None)
            )
    differ = Differ(topology.dbs, chunk_size=2)
    differ._size(len(odd))
    scan = differ._scan(topology.dbs.api, "api", API, "api")
    # The reference: every row through the Python code, however the backend computed it.
    expected: dict[int, list[int]] = {}
    with reader(topology.dbs.api) as conn:
        copies = diff.read_copies(conn, API, [u for u, _, _ in odd])
    for uuid, copy in copies.items():
        tally = expected.setdefault(bucket_of(uuid, differ.n), [0, 0, 0, 0])
        tally[0] += 1
        tally[1] += len(copy.policies)
        tally[2] += len(copy.members)
        tally[3] += sum(digest(line) for line in canonical_lines(copy))
    got = {c: norm(t) for c, t in scan.chunks.items()}
    assert got == {c: norm(t) for c, t in expected.items()}
    assert scan.hashed == len(odd) * 3
