"""Run the demo on the embedded SQLite default (``./shadowdb-data``)."""

from __future__ import annotations

import sys
from pathlib import Path

from shadowdb.cli import main


def run(*argv: str) -> None:
    print(f"$ shadowdb {' '.join(argv)}", flush=True)
    code = main(list(argv))
    if code:
        sys.exit(code)


def demo() -> None:
    data = Path("shadowdb-data")
    run("db", "sync")
    existing = {p.stem for p in data.glob("cell*.sqlite")}
    for name in ("cell1", "cell2"):
        if name not in existing:
            run("cell", "add", name, f"sqlite:///{data / (name + '.sqlite')}")
    run("db", "sync")
    run("status")


if __name__ == "__main__":
    demo()
