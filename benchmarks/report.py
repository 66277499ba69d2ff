"""Turn a pytest-benchmark JSON file into the BENCHMARKS.md tables and the latency plot.

Usage: ``python -m benchmarks.report [--compact] RESULTS.json [OUT.png]`` prints the
Markdown tables (hot path: medians per deployment, each phase's ratio to the raw floor
and to api-only, every raw formulation; writes: medians and ratios to the raw floor)
and writes the hot path's plot.

``python -m benchmarks.report --growth [--plots DIR] RESULTS.json...`` reads the
benchmarks measured at several deployment sizes (backfill, diff-report), from one file or
one per backend, and prints their growth tables and draws ``DIR/<benchmark>_growth.png``
(:mod:`benchmarks.growth`).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

PHASES = ("cell-only", "dual-write-cell-reads", "dual-write-api-reads", "api-only")
LABELS = {"sqlite": "SQLite", "mysql": "MariaDB", "postgresql": "PostgreSQL"}
BACKENDS = tuple(LABELS)


def deployment_key(info: dict[str, Any]) -> str:
    """Name a result's deployment: its backend, then its topology if it has one."""
    topology = info.get("topology")
    return f"{info['backend']} {topology}" if topology else str(info["backend"])


def label(key: str) -> str:
    """Render a deployment key for a table or a plot title."""
    backend, _, topology = key.partition(" ")
    return f"{LABELS.get(backend, backend)} {topology}".strip()


def keys_in(medians: dict[tuple[str, str, int], float]) -> list[str]:
    """Return the deployment keys found, by backend order, then topology."""
    found = {k[0] for k in medians}
    order = {b: n for n, b in enumerate(BACKENDS)}
    return sorted(found, key=lambda k: (order.get(k.partition(" ")[0], 99), k))


#: The Nova-style baselines: since Train, and Newton/Ocata (with the joins and metadata).
NOVA = ("nova-style", "nova-newton")
#: The floor each phase is held to: the raw statements reading the same side.
FLOOR_OF = {
    "cell-only": "cell",
    "dual-write-cell-reads": "cell",
    "dual-write-api-reads": "api",
    "api-only": "api",
}


Medians = dict[tuple[str, str, int], float]


def load(path: Path) -> tuple[Medians, Medians, Medians]:
    """Return contiguous medians, interleaved medians and interleaved lower quartiles."""
    raw = json.loads(path.read_text())
    medians: Medians = {}
    interleaved: Medians = {}
    quartile: Medians = {}
    settings: dict[str, Any] = {}
    for bench in raw["benchmarks"]:
        info = bench["extra_info"]
        if "path" not in info:  # another benchmark module's result
            continue
        key = deployment_key(info)
        if info["path"] == "interleaved":
            for path, value in info["medians"].items():
                interleaved[(key, path, int(info["size"]))] = value
            for path, value in info.get("p25", {}).items():
                quartile[(key, path, int(info["size"]))] = value
            continue
        medians[(key, info["path"], int(info["size"]))] = bench["stats"]["median"]
        if "settings" in info:
            settings[info["backend"]] = info["settings"]
    return medians, interleaved, quartile


def floors(medians: dict[tuple[str, str, int], float]) -> dict[tuple[str, str, int], float]:
    """Return the raw floor per (backend, side, size): the faster formulation."""
    out: dict[tuple[str, str, int], float] = {}
    for (backend, path, size), value in medians.items():
        if path.startswith("floor-"):
            side = path.split("-")[1]
            key = (backend, side, size)
            out[key] = min(out.get(key, value), value)
    return out


def table(medians: dict[tuple[str, str, int], float]) -> str:
    """Render the Markdown table: one row per backend and size."""
    floor = floors(medians)
    lines = [
        "| backend | members | "
        + " | ".join(PHASES)
        + " | floor (API reads) | floor (cell reads) | Nova-style (Train)"
        " | Nova-style (Newton/Ocata) | DWAR / api-only | worst phase / floor"
        " | Nova-style (Train) / api-only | Nova-style (Newton/Ocata) / api-only |",
        "|---" * (len(PHASES) + 10) + "|",
    ]
    sizes = sorted({s for (_, p, s) in medians if p in PHASES})
    for backend in keys_in(medians):
        for size in sizes:
            if (backend, "api-only", size) not in medians:
                continue
            ms = {p: medians[(backend, p, size)] * 1e3 for p in PHASES}
            ratios = [
                medians[(backend, p, size)] / floor[(backend, FLOOR_OF[p], size)] for p in PHASES
            ]
            nova = medians.get((backend, "nova-style", size))
            newton = medians.get((backend, "nova-newton", size))
            api_only = medians[(backend, "api-only", size)]
            cells = [f"{ms[p]:.3f}" for p in PHASES]
            lines.append(
                f"| {label(backend)} | {size} | "
                + " | ".join(cells)
                + f" | {floor[(backend, 'api', size)] * 1e3:.3f}"
                f" | {floor[(backend, 'cell', size)] * 1e3:.3f}"
                f" | {'-' if nova is None else f'{nova * 1e3:.3f}'}"
                f" | {'-' if newton is None else f'{newton * 1e3:.3f}'}"
                f" | {ms['dual-write-api-reads'] / ms['api-only']:.2f}x"
                f" | {max(ratios):.2f}x"
                f" | {'-' if nova is None else f'{nova / api_only:.1f}x'}"
                f" | {'-' if newton is None else f'{newton / api_only:.1f}x'} |"
            )
    return "\n".join(lines)


def strategy_line(medians: dict[tuple[str, str, int], float]) -> str:
    """Compare api-only asking both cells with api-only routing first (two cells)."""
    found = [
        f"{label(key)} {size} members: both cells asked {value * 1e3:.3f} ms,"
        f" routed {medians[(key, 'api-only-routed', size)] * 1e3:.3f} ms"
        for (key, path, size), value in sorted(medians.items())
        if path == "api-only" and (key, "api-only-routed", size) in medians
    ]
    return "\n".join(found)


def floor_table(medians: dict[tuple[str, str, int], float]) -> str:
    """Render every raw formulation's median, so the strategy choice can be read off."""
    forms = sorted({p for (_, p, _) in medians if p.startswith("floor-")})
    lines = [
        "| deployment | members | " + " | ".join(forms) + " |",
        "|---" * (len(forms) + 2) + "|",
    ]
    sizes = sorted({s for (_, p, s) in medians if p.startswith("floor-")})
    for backend in keys_in(medians):
        for size in sizes:
            row = [medians.get((backend, f, size)) for f in forms]
            if all(v is None for v in row):
                continue
            cells = ["-" if v is None else f"{v * 1e3:.3f}" for v in row]
            lines.append(f"| {label(backend)} | {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checkout_table(medians: dict[tuple[str, str, int], float]) -> str:
    """Render the pooled checkout + ``SELECT 1`` medians, write vs hot-path read engine."""
    lines = ["| server | write engine (us) | read engine (us) | saved (us) |", "|---|---|---|---|"]
    for server in ("mysql", "postgresql"):
        write = medians.get((server, "checkout write-engine", 0))
        read = medians.get((server, "checkout read-engine", 0))
        if write is not None and read is not None:
            lines.append(
                f"| {server} | {write * 1e6:.0f} | {read * 1e6:.0f} | {(write - read) * 1e6:.0f} |"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


def no_group_line(medians: dict[tuple[str, str, int], float]) -> str:
    """Render the instance-in-no-group medians (api-only), per backend."""
    found = [
        f"{backend}: {medians[(backend, 'no-group api-only', 0)] * 1e3:.3f} ms"
        for backend in BACKENDS
        if (backend, "no-group api-only", 0) in medians
    ]
    return "instance in no group (api-only): " + ", ".join(found) if found else ""


def plot(medians: dict[tuple[str, str, int], float], out: Path) -> None:
    """Plot median latency against members: one line per phase, the floors and Nova-style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = floors(medians)
    backends = keys_in(medians)
    fig, axes = plt.subplots(1, len(backends), figsize=(6.5 * len(backends), 4.8), squeeze=False)
    for ax, backend in zip(axes[0], backends, strict=True):
        series: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for (b, path, size), value in sorted(medians.items(), key=lambda kv: kv[0][2]):
            if b == backend and (path in PHASES or path in NOVA):
                series[path].append((size, value * 1e3))
        for side in ("api", "cell"):
            series[f"raw floor ({side} reads)"] = sorted(
                (s, v * 1e3) for (b, sd, s), v in floor.items() if b == backend and sd == side
            )
        for name, points in series.items():
            style = "--" if name.startswith("raw") else ":" if name in NOVA else "-"
            ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("group members")
        ax.set_ylabel("median latency (ms)")
        ax.set_title(f"group of an instance, then its hosts: {label(backend)}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def writes_table(path: Path) -> str:
    """Render the write benchmark: medians (ms) and ratios to the protocol floor and raw write.

    Each cell reads create, add_members, save. The protocol floor is shadowdb's own
    statements replayed through the bare driver (``benchmarks/protocol_floor.py``); the
    raw write is the faster of the raw API and raw cell writes.
    """
    raw = json.loads(path.read_text())
    writes = ("create", "add_members", "save")
    lines = [
        "| backend | phase | shadowdb (ms) | protocol floor (ms) | raw write (ms)"
        " | shadowdb / raw | shadowdb / floor | floor / raw | statements, commits (per database) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for bench in raw["benchmarks"]:
        info = bench["extra_info"]
        if "ratios" not in info:
            continue
        med = info["medians"]
        raw_ms = [min(med[f"{w} raw-api"], med[f"{w} raw-cell"]) * 1e3 for w in writes]
        floor = info.get("shadowdb_over_protocol")
        cells = [
            ", ".join(f"{med[f'{w} shadowdb'] * 1e3:.2f}" for w in writes),
            ", ".join(f"{med[f'{w} floor'] * 1e3:.2f}" for w in writes) if floor else "-",
            ", ".join(f"{v:.2f}" for v in raw_ms),
            ", ".join(f"{info['ratios'][w]:.2f}x" for w in writes),
            ", ".join(f"{floor[w]:.2f}x" for w in writes) if floor else "-",
            ", ".join(f"{info['protocol_over_raw'][w]:.2f}x" for w in writes) if floor else "-",
            "; ".join(_statements(info["statements"][w]) for w in writes)
            if "statements" in info
            else "-",
        ]
        lines.append(f"| {label(info['backend'])} | {info['phase']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _statements(per_database: dict[str, dict[str, int]]) -> str:
    """Render one write's statements as ``api 10+2c, cell1 7+1c`` (rollbacks as ``r``)."""
    parts = []
    for database, n in per_database.items():
        text = f"{database} {n['statements']}+{n['commits']}c"
        if n["rollbacks"]:
            text += f"{n['rollbacks']}r"
        parts.append(text)
    return ", ".join(parts)


def compact(path: Path) -> None:
    """Drop pytest-benchmark's per-round timings from ``path`` (megabytes; stats stay)."""
    raw = json.loads(path.read_text())
    for bench in raw["benchmarks"]:
        bench["stats"].pop("data", None)
    path.write_text(json.dumps(raw, indent=1) + "\n")


def main(argv: list[str]) -> None:
    """Print the table for ``argv[0]`` and write the plot to ``argv[1]``.

    ``--compact`` first strips the per-round timings from the JSON file, so that it can
    be kept beside ``BENCHMARKS.md``. ``--growth`` hands the rest to
    :func:`benchmarks.growth.main`.
    """
    if argv and argv[0] == "--growth":
        from benchmarks import growth

        growth.main(argv[1:])
        return
    if "--compact" in argv:
        argv = [a for a in argv if a != "--compact"]
        compact(Path(argv[0]))
    writes = writes_table(Path(argv[0]))
    if writes:
        print(
            "Writes, medians of interleaved turns (create, add_members, save), and their ratios:\n"
        )
        print(writes)
        return
    medians, interleaved, quartile = load(Path(argv[0]))
    if interleaved:
        print("Interleaved turns, medians (the figures compared):\n")
        print(table(interleaved))
        print("\nInterleaved turns, lower quartiles:\n")
        print(table(quartile))
        print("\nInterleaved turns, every raw formulation (medians, ms):\n")
        print(floor_table(interleaved))
        print("\nInterleaved turns, two cells, api-only (medians):\n")
        print(strategy_line(interleaved))
        print("\nContiguous pytest-benchmark runs (same run, for reference):\n")
    print(table(medians))
    for extra in (checkout_table(medians), no_group_line(medians)):
        if extra:
            print()
            print(extra)
    if len(argv) > 1:
        plot(interleaved or medians, Path(argv[1]))


if __name__ == "__main__":
    main(sys.argv[1:])
