"""A whole cutover over a Nova-built deployment full of legacy rows, without ``--force``.

The databases are built with Nova's own DDL (:mod:`tests.support.nova`: a utf8 API
database, cell0 mapped first), then :func:`shadowdb.testing.write_legacy_cells` fills
cell1 with every shape Nova's tables allowed, in realistic proportions. The README's
cutover runs as written, through the command line and its guards, and every legacy group
is then checked field by field in the API database, its hosts through ``get_hosts``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from shadowdb import models
from shadowdb.cli import ExitCode
from shadowdb.databases import Databases, connect, reader
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.settings import Settings
from shadowdb.testing import LEGACY_SHAPES, LegacyGroup, plan_legacy_groups, write_legacy_cells
from tests.conftest import FreshDatabases
from tests.support import nova
from tests.support.cli import Cli

#: Groups written into cell1: enough that every shape appears several times.
GROUPS = 240
SEED = 20261204


@pytest.fixture
def cli(cli_here: Cli) -> Cli:
    return cli_here


@pytest.fixture
def legacy(
    fresh: FreshDatabases, settings: Settings, cli: Cli
) -> Iterator[tuple[Databases, list[LegacyGroup], str]]:
    """A Nova-built deployment (cell0 on ``cell2``), synced, with legacy groups in cell1."""
    built = nova.build_deployment(
        api_url=fresh.api_url,
        cell0_url=fresh.cell_urls["cell2"],
        cell1_url=fresh.cell_urls["cell1"],
    )
    api_url = nova.nova_connection_string(built.api_url)
    # Before the cutover the groups are the cells': the fixture's one API group (a Nova
    # newer than the spec writes groups there itself) is not part of this rehearsal.
    engine = sa.create_engine(built.api_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM instance_group_member"))
        conn.execute(sa.text("DELETE FROM instance_group_policy"))
        conn.execute(sa.text("DELETE FROM instance_groups"))
    engine.dispose()
    cli.ok("db", "sync", "--api-url", api_url)
    dbs = connect(api_url, settings=settings)
    try:
        written = write_legacy_cells(dbs, groups=GROUPS, seed=SEED)
        yield dbs, written, api_url
    finally:
        dbs.dispose()


def test_the_builder_is_reproducible_and_takes_every_shape(
    legacy: tuple[Databases, list[LegacyGroup], str],
) -> None:
    dbs, written, _ = legacy
    assert len(written) == GROUPS and {g.cell for g in written} == {"cell1"}
    taken = {shape for g in written for shape in g.shapes}
    assert taken == set(LEGACY_SHAPES), set(LEGACY_SHAPES) - taken
    tidy = sum(1 for g in written if not g.shapes)
    assert GROUPS * 0.3 < tidy < GROUPS * 0.8  # most groups tidy, as in a real cloud
    # The same seed plans the same deployment, uuids and all; another seed another one.
    assert plan_legacy_groups("cell1", groups=GROUPS, seed=SEED) == written
    other = plan_legacy_groups("cell1", groups=GROUPS, seed=SEED + 1)
    assert {g.uuid for g in other}.isdisjoint(g.uuid for g in written)
    # What was written is what the plan says: the cell's live rows, read back, with the
    # duplicate member rows really there.
    ours = [g.uuid for g in written]
    with reader(dbs.cell("cell1").engine) as conn:
        g, m = models.cell_groups, models.cell_members
        live = set(conn.scalars(sa.select(g.c.uuid).where(g.c.deleted == 0, g.c.uuid.in_(ours))))
        rows = conn.scalar(
            sa.select(sa.func.count())
            .select_from(m.join(g, g.c.id == m.c.group_id))
            .where(g.c.deleted == 0, m.c.deleted == 0, g.c.uuid.in_(ours))
        )
    kept = [g for g in written if not g.deleted]
    assert live == {g.uuid for g in kept}
    duplicated = sum(1 for g in kept if "duplicate-members" in g.shapes and g.members)
    assert duplicated > 0
    assert rows == sum(len(g.members) for g in kept) + duplicated


def _api_copies(dbs: Databases) -> dict[str, dict[str, object]]:
    g, p, m = models.api_groups, models.api_policies, models.api_members
    out: dict[str, dict[str, object]] = {}
    with reader(dbs.api) as conn:
        for row in conn.execute(sa.select(g)):
            out[row.uuid] = {
                "name": row.name,
                "user_id": row.user_id,
                "project_id": row.project_id,
                "created_at": row.created_at,
                "updated_at": row.updated_at,
                "policies": [],
                "members": [],
                "id": row.id,
            }
        by_id = {v["id"]: v for v in out.values()}
        for gid, policy in conn.execute(sa.select(p.c.group_id, p.c.policy).order_by(p.c.id)):
            by_id[gid]["policies"].append(policy)  # type: ignore[attr-defined]
        for gid, member in conn.execute(
            sa.select(m.c.group_id, m.c.instance_uuid).order_by(m.c.id)
        ):
            by_id[gid]["members"].append(member)  # type: ignore[attr-defined]
    return out


def test_a_legacy_deployment_reaches_api_only_and_cleanup_without_force(
    legacy: tuple[Databases, list[LegacyGroup], str], cli: Cli
) -> None:
    dbs, written, api_url = legacy
    url = ("--api-url", api_url)
    for argv in (
        ("phase", "set", "dual-write-cell-reads"),
        ("backfill",),
        ("diff-report",),
        ("phase", "set", "dual-write-api-reads"),
        ("diff-report",),
        ("phase", "set", "api-only"),
        ("cleanup", "--yes"),
    ):
        run = cli(*argv, *url)
        assert run.code == ExitCode.OK, f"{argv}: {run.out}\n{run.err}"
        if argv == ("diff-report",):
            # The duplicate member rows are noted as legacy noise, not a difference.
            assert "legacy duplicates:" in run.out
    copies = _api_copies(dbs)
    ctx = RequestContext(dbs, None, None, is_admin=True)
    checked = 0
    for group in written:
        copy = copies.get(group.uuid)
        if group.deleted:
            assert copy is None, f"{group.uuid} ({group.shapes}) was brought back"
            continue
        assert copy is not None, f"{group.uuid} ({group.shapes}) was not migrated"
        for field in ("name", "user_id", "project_id", "created_at", "updated_at"):
            assert copy[field] == getattr(group, field), (group.uuid, group.shapes, field)
        assert copy["policies"] == list(group.policies), (group.uuid, group.shapes)
        assert sorted(copy["members"]) == sorted(group.members), (group.uuid, group.shapes)
        hosts = InstanceGroup.get_by_uuid(ctx, group.uuid).get_hosts()
        assert set(hosts) == group.hosts, (group.uuid, group.shapes)
        checked += 1
    assert checked == sum(1 for g in written if not g.deleted) > GROUPS * 0.8
    # The cells hold no live group any more: cleanup retired every copy.
    with reader(dbs.cell("cell1").engine) as conn:
        g = models.cell_groups
        assert conn.scalar(sa.select(sa.func.count()).where(g.c.deleted == 0)) == 0
