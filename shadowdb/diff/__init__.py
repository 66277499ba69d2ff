"""Compare every cell's live groups with the API database's copies, by uuid: the diff report.

The diff report is what ``phase set`` trusts before the API database becomes the
authority, so it is built against the ways such tools mislead: it never samples, a scan
that read fewer rows than the database holds is an error, its checksum has no practical
collisions, and a write in flight is not reported as a divergence.

Two levels
==========

1. **Checksums per chunk.** The uuid key space is cut into ``n`` chunks by the uuid's
   first eight hex digits (``bucket = prefix * n >> 32``, ``n`` sized so that a chunk
   holds about ``chunk_size`` groups; uuids whose first eight characters are not
   lowercase hex share one extra chunk, ``n``). For every database, one aggregate query
   per table computes, per chunk, the number of rows and a checksum: every live row
   (group, policy, member) is written as a canonical line (``g``/``p``/``m``, then each
   field as ``<length>:<value>`` or ``~`` for NULL; ``created_at`` to the second), the
   first 64 bits of its MD5 digest are read as a number, and the numbers are summed
   modulo 2**64. MariaDB (``MD5``, ``CONV`` of 16 hex digits, exact ``SUM``) and
   PostgreSQL (``md5``, 16 hex digits as ``bit(64)::bigint``, exact ``sum``; in parallel
   workers, which share the transaction's snapshot) compute this inside the database;
   SQLite streams the rows through the same function in Python.
   Sums are additive, so the cell side of a chunk is the sum over every cell, and it must
   equal the API side.
2. **Rows, only where a chunk differs.** Each differing chunk is read from every
   database and compared group by group: fields, the policy multiset, the member
   multiset. A database is read either chunk by chunk through an index range on
   ``uuid`` (MariaDB, whose InnoDB indexes the children's ``group_id``, while at most a
   quarter of the chunks differ) or in one pass ordered by ``uuid`` that keeps only the
   differing chunks, one at a time (PostgreSQL and SQLite, where Nova's schema has no
   index to find a group's children by, so a per-chunk read would scan them all each
   time; or when many chunks differ). Memory holds one chunk either way.

Why this checksum
    Each row contributes a 64-bit hash (the first 8 bytes of the MD5 of its canonical
    line), summed modulo 2**64, and the sums are compared together with the exact row
    counts of each table. Two different chunks with equal counts differ in the
    multiplicity of some row ``r`` by ``d`` (``0 < |d|`` <= the chunk's rows); the sums then
    differ by ``d * h(r)`` plus terms independent of ``h(r)``, and for a hash that behaves
    as uniform on data nobody crafted to collide they agree with probability at most
    ``2**(v-64)``, ``v`` the number of times 2 divides ``d``: 2**-64 when a row is on one
    side only (``d = 1``), 2**-63 for a doubled row. Over a thousand chunks compared every
    minute for a year (5 * 10**8 comparisons) the chance of one miss is below 10**-10, far
    beneath the rate of undetected hardware errors. 64 bits rather than MD5's 128 halve
    the work on the servers (one ``CONV`` and one exact ``SUM`` per row on MariaDB, one
    cast and one sum on PostgreSQL, instead of two and four).

    A sum, not a ``BIT_XOR`` (pt-table-checksum's aggregate, an integer and so cheaper on
    MariaDB): XOR cancels any row whose multiplicity differs by an even number, and the
    row counts do not catch it, because Nova's tables allow duplicate rows ("Duplicate
    rows" below). A cell chunk with members ``{a, a, c}`` against API members
    ``{c, e, e}`` has equal counts and equal XORs: a certain miss, not a 2**-64 one. A sum
    counts a doubled row twice.

    MD5's known weakness is crafted collisions of binary blocks, which no length-prefixed
    line of short text fields can carry; it is the hash both servers compute fastest and
    Python's ``hashlib`` matches. Against an adversary an additive 64-bit sum is the weak
    link whatever the hash (a generalized birthday search finds rows that sum alike); the
    report guards against bugs and lost writes, not against someone choosing group names
    to hide a divergence. The length-prefixed encoding makes field boundaries unambiguous
    (``"ab" + "c"`` never hashes like ``"a" + "bc"``; NULL is not ``""``). The Python
    implementation is the reference: tests check that each backend's SQL yields the same
    sums on the same rows, odd values included.

Counting every row
==================

Each database's checksums are computed in one snapshot (``REPEATABLE READ`` on the
servers, one read transaction on SQLite), together with plain ``count(*)`` of its three
tables and the list of orphan rows. The rows hashed, chunk by chunk, plus the orphans
must equal the plain counts exactly: otherwise :class:`~shadowdb.errors.ScanIncomplete`
is raised and the run ends in error (exit 2), never "clean". Rows read row by row are
checked the same way: a chunk read by range against a count of that range in its
snapshot, a pass against counts taken in the pass's snapshot, once it has read to the end.

Live traffic
============

The databases are checksummed at once (:data:`~shadowdb.diff.differ.SCANNERS` at a
time), each in a snapshot of its own, while writers go on: no two snapshots are taken at
one moment, so a group written between them differs. Every key that differs is therefore
*re-checked* before it is reported: its live cell row is locked the way every writer
locks it (cell first, ``SELECT ... FOR UPDATE``; :mod:`shadowdb.locks`), then both
copies and both journals are read. A dual-write writer holds that lock until both of its
commits are done, and a write whose second half failed leaves a journal entry, so:

* a key that is level under the lock is dropped (it was a write in flight);
* a key with pending journal entries is re-checked after they drain;
* a key is reported only when it differs, with no journal entry pending, in two re-checks
  at least ``Settings.write_grace`` apart (the longest a write takes) that saw exactly the
  same copies. A key still changing after every re-check is reported as last seen, with
  its pending journal flagged.

What is authoritative, and ``--repair``
=======================================

Every difference is reported with the side the current phase trusts: the cell in
``cell-only`` and ``dual-write-cell-reads``; the API database in ``dual-write-api-reads``
and ``api-only``, except that in ``dual-write-api-reads`` a group missing from the API
database is still the cell's (the phase adopts cell copies it has not seen yet). With
``repair`` every such key gets an entry in the journal of its authoritative side: the API
journal, or the journal of the cell that holds the group (the default cell for a group no
cell holds). The next ``shadowdb backfill`` replays it, copying the authoritative state to
the other side under the lock. Keys with no authoritative copy (a uuid live in two cells,
orphan rows) are reported and not enqueued.

Duplicate rows
==============

Nova's tables have no unique constraint on a group's policies or members, and legacy
cells hold groups with two live rows for one member. A group's policies and members are
*sets*: every copy shadowdb writes holds each once, and two copies are compared as sets
(:data:`shadowdb.queries.COMPARED_FIELDS`, the one definition backfill and the
synchroniser use too). Duplicate rows are therefore not a difference and never block a
phase change: the report counts the groups that hold them (``legacy_duplicates``) as
legacy noise. The checksums still hash every row, so a chunk holding such a group is
always compared row by row, where the sets decide; the cost is that chunk's rows.
Nothing rewrites them in the cell: the reverse copy (``backfill --reverse``) writes the
set, as any copy does.

``cell`` limits a run to one cell's groups: with the API holding every cell's groups, no
checksum can stand for one cell's share, so that cell is compared row by row with the API
copies of its uuids. Such a run cannot see API groups that no cell holds, and does not
admit a phase change (:class:`shadowdb.guards.CleanRecentDiff`).

The package
===========

:mod:`~shadowdb.diff.checksums` writes the canonical lines and computes the checksums on
each backend; :mod:`~shadowdb.diff.readers` reads copies (by uuid, by index ranges, in one
ordered pass) and counts what it read; :mod:`~shadowdb.diff.differ` runs the two levels
and the re-checks; :mod:`~shadowdb.diff.findings` says what differs and which side is
authoritative; :mod:`~shadowdb.diff.repair` enqueues repairs;
:mod:`~shadowdb.diff.results` stores each run's result, and is the only reader of those
results (the phase guards and ``cleanup`` ask it); :mod:`~shadowdb.diff.report` is the
command that ties them together.
"""

from __future__ import annotations

from shadowdb.diff.checksums import Copy, bucket_of, canonical_lines
from shadowdb.diff.differ import DEFAULT_CHUNK, RECHECKS, Differ, Progress
from shadowdb.diff.findings import DiffKind, DiffReport, Finding, RowCounts, authority
from shadowdb.diff.readers import read_copies
from shadowdb.diff.report import run_diff
from shadowdb.diff.results import (
    CLEANED_UP,
    RunSummary,
    StoredResult,
    last_result,
    record_superseded,
)

__all__ = [
    "CLEANED_UP",
    "DEFAULT_CHUNK",
    "RECHECKS",
    "Copy",
    "DiffKind",
    "DiffReport",
    "Differ",
    "Finding",
    "Progress",
    "RowCounts",
    "RunSummary",
    "StoredResult",
    "authority",
    "bucket_of",
    "canonical_lines",
    "last_result",
    "read_copies",
    "record_superseded",
    "run_diff",
]
