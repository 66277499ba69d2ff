"""Fuzzed input: every call succeeds, or fails with a typed error and one clear line.

Hypothesis draws object fields (unicode of every plane, quotes, SQL metacharacters, NUL
bytes and other control characters, empty strings, 255 and more characters, malformed
uuids, unknown policies) and command lines made of them. Whatever it draws, on every
backend: the object API either succeeds or raises a :class:`~shadowdb.errors.ShadowDBError`
with a one-line message, and a call that fails wrote nothing anywhere; the command line
exits with a documented code, prints one ``shadowdb: error:`` line and no traceback, and
a refused command wrote nothing.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowdb import cli
from shadowdb.errors import InvalidInput, ShadowDBError
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.helpers import dump_all, put_in_phase

#: Text as users and attackers type it.
_NASTY = st.sampled_from(
    [
        "",
        " ",
        "'",
        '"',
        "\\",
        "%",
        "_",
        "; DROP TABLE instance_groups; --",
        "' OR '1'='1",
        "\x00",
        "a\x00b",
        "\x1b[31m",
        "\n",
        "\r\n",
        "\t",
        "😀",
        "\U0001f600" * 64,
        "é" * 255,
        "x" * 255,
        "x" * 256,
        "グループ" * 70,
        "\u202e",
        "\ud7ff",
        "NULL",
        "None",
    ]
)
TEXT = st.one_of(_NASTY, st.text(max_size=300), st.none())
UUIDISH = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids().map(lambda u: u.hex),
    _NASTY,
    st.text(max_size=40),
)
POLICY = st.one_of(
    st.sampled_from(["affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"]),
    _NASTY,
    st.text(max_size=30),
)

FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _one_line(err: BaseException) -> None:
    text = str(err)
    assert text and "\n" not in text.strip() and "Traceback" not in text, repr(text)


@FUZZ
@given(
    name=TEXT,
    user=TEXT,
    project=TEXT,
    policies=st.lists(POLICY, max_size=3),
    members=st.lists(UUIDISH, max_size=3),
)
def test_create_with_any_fields_succeeds_or_fails_cleanly(
    topology: Topology, name: Any, user: Any, project: Any, policies: Any, members: Any
) -> None:
    dbs = topology.dbs
    put_in_phase(dbs, Phase.DUAL_WRITE_CELL_READS)
    ctx = RequestContext(dbs, "p1", "u1", is_admin=True)
    before = dump_all(dbs)
    group = InstanceGroup(ctx)
    try:
        group.name = name
        group.user_id = user
        group.project_id = project
        group.policies = policies
        group.members = members
        group.create()
    except ShadowDBError as err:
        _one_line(err)
        assert dump_all(dbs) == before, "a failed create wrote something"
        if any(isinstance(v, str) and "\x00" in v for v in (name, user, project)):
            assert isinstance(err, InvalidInput), err  # the same refusal on every backend
        return
    found = InstanceGroup.get_by_uuid(ctx, group.uuid)
    assert (found.name, found.user_id, found.project_id) == (name, user, project)


@FUZZ
@given(uuid=UUIDISH, instances=st.lists(UUIDISH, max_size=3), name=TEXT)
def test_lookups_and_member_writes_with_any_input_fail_cleanly(
    topology: Topology, uuid: Any, instances: Any, name: Any
) -> None:
    dbs = topology.dbs
    put_in_phase(dbs, Phase.DUAL_WRITE_API_READS)
    ctx = RequestContext(dbs, "p1", "u1")
    before = dump_all(dbs)
    calls = (
        lambda: InstanceGroup.get_by_uuid(ctx, uuid),
        lambda: InstanceGroup.get_by_name(ctx, name),
        lambda: InstanceGroup.get_by_hint(ctx, name if name is not None else ""),
        lambda: InstanceGroup.add_members(ctx, uuid, instances),
        lambda: InstanceGroup.remove_members(ctx, uuid, instances),
    )
    for call in calls:
        with pytest.raises(ShadowDBError) as raised:
            call()  # nothing exists: each call must fail, typed
        _one_line(raised.value)
    assert dump_all(dbs) == before


@pytest.fixture
def run_cli(tmp_path: Path) -> Iterator[Any]:
    saved = structlog.get_config()

    def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(list(argv), stdout=out, stderr=err, environ={})
        return code, out.getvalue(), err.getvalue()

    yield run
    structlog.configure(**saved)


_COMMANDS = st.sampled_from(
    [
        ("cell", "add", "{a}", "{b}"),
        ("cell", "remove", "{a}"),
        ("cell", "set-default", "{a}"),
        ("phase", "set", "{a}"),
        ("diff-report", "--cell", "{a}"),
        ("diff-report", "--limit", "{a}"),
        ("backfill", "--batch-size", "{a}"),
        ("backfill", "--cell", "{a}", "--max-count", "{b}"),
        ("{a}",),
        ("status", "--format", "{a}"),
    ]
)
_ARG = st.one_of(_NASTY, st.text(max_size=80), st.integers(-5, 10**12).map(str))


@FUZZ
@given(command=_COMMANDS, a=_ARG, b=_ARG)
def test_any_command_line_exits_with_a_documented_code_and_one_line(
    topology: Topology, run_cli: Any, command: tuple[str, ...], a: str, b: str
) -> None:
    dbs = topology.dbs
    before = dump_all(dbs)
    argv = [part.format(a=a, b=b) for part in command]
    if "\x00" in "".join(argv):
        argv = [part.replace("\x00", "") for part in argv]  # a shell cannot pass a NUL
    code, out, err = run_cli(*argv, "--api-url", topology.api_url_text)
    assert code in {int(c) for c in cli.ExitCode}, (argv, code, err)
    assert "Traceback" not in out + err, (argv, err)
    if code in (cli.ExitCode.BAD_INPUT, cli.ExitCode.REFUSED):
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("shadowdb: error: "), (argv, err)
        assert not lines[0].startswith("shadowdb: error: unexpected"), (argv, err)
        assert dump_all(dbs) == before, (argv, code, err)  # refused: nothing written
