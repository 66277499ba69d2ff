"""One soak writer process: random operations through the object API, each one logged.

Every operation is written to the log (one JSON object per line, flushed) before it
starts, and again when it ends with its outcome:

* ``ack``: it returned; its effect must be in the final state;
* ``failed``: it raised an error that guarantees nothing was written (the group was not
  there, the input was refused, a Galera node other than the writer node was reached);
* ``unknown``: anything else (a database error, a lost connection): it may or may not
  have committed. An operation with a start line and no end line (the process was
  killed) is unknown too.

Groups: each writer creates, renames and destroys its own groups, and adds and removes
members of its own naming (``<writer>-<n>`` instance uuids) on its own groups and on the
shared groups the harness made, so that every (group, member) pair has one writer, whose
operations on it are sequential, while many writers hit the same group rows.

Run as ``python -m tests.soak.writer --api-url URL --log FILE --writer NAME ...``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid as uuidlib
from typing import Any

from shadowdb.databases import connect
from shadowdb.errors import GroupNotFound, InvalidInput, NotTheWriterNode
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.settings import Settings

#: The project every soak group belongs to (each writer sees every group).
PROJECT = "soak"

#: Operations and their weights.
WEIGHTS = {
    "create": 12,
    "rename": 10,
    "add": 26,
    "remove": 14,
    "destroy": 6,
    "get": 32,
}


def _member(writer: str, rng: random.Random) -> str:
    """An instance uuid only this writer uses (its name is in the uuid's namespace)."""
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"{writer}/{rng.getrandbits(64)}"))


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="soak-writer")
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--writer", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--ttl", type=float, required=True)
    parser.add_argument("--until", type=float, required=True, help="epoch seconds")
    parser.add_argument("--shared", default="", help="comma-separated shared group uuids")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    shared = [u for u in args.shared.split(",") if u]
    settings = Settings(api_url=args.api_url, phase_ttl=args.ttl, actor=args.writer)
    dbs = connect(args.api_url, settings=settings)
    ctx = RequestContext(dbs, PROJECT, args.writer)
    own: list[str] = []  # groups this writer created and has not destroyed
    gone: list[str] = []  # groups this writer destroyed: reading them must find nothing
    present: dict[str, set[str]] = {}  # members this writer believes it added, per group
    ops, weights = list(WEIGHTS), list(WEIGHTS.values())
    with open(args.log, "a", buffering=1, encoding="utf-8") as log:
        n = 0
        while time.time() < args.until:
            n += 1
            op = rng.choices(ops, weights)[0]
            if op in ("rename", "destroy") and not own:
                op = "create"
            pool = own + shared
            entry: dict[str, Any] = {"w": args.writer, "n": n, "op": op}
            if op == "create":
                entry["g"] = str(uuidlib.uuid4())
                entry["name"] = f"{args.writer}-g{n}"
                entry["m"] = [_member(args.writer, rng) for _ in range(rng.randint(0, 2))]
            elif op in ("rename", "destroy"):
                entry["g"] = rng.choice(own)
                entry["name"] = f"{args.writer}-r{n}"
            elif op == "add":
                entry["g"] = rng.choice(pool)
                entry["m"] = [_member(args.writer, rng) for _ in range(rng.randint(1, 3))]
            elif op == "remove":
                entry["g"] = rng.choice(pool)
                mine = sorted(present.get(entry["g"], ()))
                if not mine:
                    entry["op"] = op = "get"
                else:
                    entry["m"] = rng.sample(mine, rng.randint(1, min(2, len(mine))))
            else:
                entry["g"] = rng.choice(gone if gone and rng.random() < 0.2 else pool)
            entry["t0"] = time.time()
            log.write(json.dumps(entry) + "\n")
            end: dict[str, Any] = {"w": args.writer, "n": n}
            try:
                result = _perform(ctx, entry)
                end["outcome"] = "ack"
                if result is not None:
                    end["result"] = result
                _remember(entry, own, present, gone)
            except (GroupNotFound, InvalidInput, NotTheWriterNode) as err:
                end["outcome"] = "failed"
                end["error"] = f"{type(err).__name__}: {err}"[:300]
                if op == "destroy" and isinstance(err, GroupNotFound):
                    own.remove(entry["g"])
            except Exception as err:  # may have committed
                end["outcome"] = "unknown"
                end["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            end["t1"] = time.time()
            log.write(json.dumps(end) + "\n")
            time.sleep(rng.random() * 0.01)
    dbs.dispose()
    return 0


def _perform(ctx: RequestContext, entry: dict[str, Any]) -> Any:
    op, group = entry["op"], entry["g"]
    if op == "create":
        g = InstanceGroup(
            ctx,
            uuid=group,
            name=entry["name"],
            user_id=ctx.user_id,
            project_id=PROJECT,
            policies=["anti-affinity"],
            members=entry["m"],
        )
        g.create()
        return None
    if op == "rename":
        g = InstanceGroup.get_by_uuid(ctx, group)
        g.name = entry["name"]
        g.save()
        return None
    if op == "destroy":
        InstanceGroup.get_by_uuid(ctx, group).destroy()
        return None
    if op == "add":
        InstanceGroup.add_members(ctx, group, entry["m"])
        return None
    if op == "remove":
        InstanceGroup.remove_members(ctx, group, entry["m"])
        return None
    g = InstanceGroup.get_by_uuid(ctx, group)
    return {"name": g.name, "members": sorted(g.members or [])}


def _remember(
    entry: dict[str, Any], own: list[str], present: dict[str, set[str]], gone: list[str]
) -> None:
    op, group = entry["op"], entry["g"]
    if op == "create":
        own.append(group)
        present[group] = set(entry["m"])
    elif op == "destroy":
        own.remove(group)
        gone.append(group)
        present.pop(group, None)
    elif op == "add":
        present.setdefault(group, set()).update(entry["m"])
    elif op == "remove":
        present.setdefault(group, set()).difference_update(entry["m"])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
