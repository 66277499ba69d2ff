"""Imported by a service, shadowdb writes nothing to stdout and logs through ``logging``.

The service runs in its own process, so no configuration of the test run (nor of the
command line) can leak into it: it imports shadowdb, configures the standard library's
logging as a host application does, and writes and reads groups.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SERVICE = textwrap.dedent(
    """
    import json
    import logging
    import sys
    import uuid
    from pathlib import Path

    import shadowdb
    from shadowdb import commands
    from shadowdb.objects import InstanceGroup, RequestContext
    from shadowdb.testing import write_legacy_cells

    folder = sys.argv[1]

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.records = []

        def emit(self, record):
            self.records.append(record)

    keep = Keep()
    logging.basicConfig(level=logging.DEBUG, handlers=[keep])

    settings = shadowdb.Settings(data_dir=Path(folder), phase_ttl=0)
    with shadowdb.connect(settings=settings, create=True) as dbs:
        commands.sync_schema(dbs)
        commands.add_cell(dbs, "cell1", f"sqlite:///{folder}/cell1.sqlite", create=True)
        commands.sync_schema(dbs)
        legacy = write_legacy_cells(dbs, groups=3, seed=1, shapes={})
        commands.set_phase(dbs, "dual-write-cell-reads")
        commands.set_phase(dbs, "dual-write-api-reads", force=True, reason="test")
        ctx = RequestContext(dbs, "project-1", "user-1", is_admin=True)
        group = InstanceGroup(
            ctx, name="web", project_id="project-1", user_id="user-1",
            policies=["anti-affinity"],
        )
        group.create()
        InstanceGroup.add_members(ctx, group.uuid, [str(uuid.uuid4())])
        InstanceGroup.get_by_uuid(ctx, group.uuid).get_hosts()
        # A legacy group the API database lacks: read from its cell, announced.
        InstanceGroup.get_by_uuid(ctx, legacy[0].uuid).get_hosts()

    print(json.dumps([
        {"logger": r.name, "message": r.getMessage(), "level": r.levelname,
         "cell": getattr(r, "cell", None)}
        for r in keep.records
    ]), file=sys.stderr)
    """
)


@pytest.mark.sqlite
def test_a_service_importing_shadowdb_gets_its_events_in_logging_and_nothing_on_stdout(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWDB_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", SERVICE, str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == ""
    records = json.loads(done.stderr.strip().splitlines()[-1])
    events = {r["message"]: r for r in records}
    # Each under the logger of the module that logged it, with its context as extra keys.
    assert events["fallback_read"]["logger"] == "shadowdb.phases.dual_write_api_reads"
    assert events["fallback_read"]["cell"] == "cell1"
    assert events["phase_changed"]["logger"] == "shadowdb.switcher"
    assert events["cell_added"]["level"] == "INFO"
    assert events["schema_synced"]["logger"] == "shadowdb.commands"


@pytest.mark.sqlite
def test_a_host_that_configured_structlog_keeps_its_configuration() -> None:
    script = textwrap.dedent(
        """
        import structlog
        structlog.configure(processors=[structlog.processors.KeyValueRenderer()])
        import shadowdb.logs
        shadowdb.logs.library_defaults()
        structlog.get_logger("x").info("hello", where="host")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "where='host' event='hello'"
