"""Show how the backfill's and diff-report's cost grows with the deployment, per backend.

Both benchmarks time their path and a plain baseline (the floor) at several deployment
sizes (groups). A read that scans once per batch makes the time grow with the square of
the deployment while every single figure still looks fine, so the question asked of them
is the *growth exponent*: time ~ groups ** k, ``k = log(t2 / t1) / log(n2 / n1)``, where 1
is linear and 2 is quadratic. This module turns one or more pytest-benchmark JSON files
(the runs per backend may sit in separate files) into a Markdown table per benchmark and a
log-log plot of seconds against groups, one panel per backend, where a dotted slope-1 line
beside each path shows linear growth.

Every figure is a benchmark's best round (``stats.min``), as the benchmarks' own ratios
and ``rows_per_s`` are, and the ratio to the floor is a rate ratio, floor seconds over the
path's seconds, as ``BENCHMARKS.md`` states it (0.5 means half the floor's rows per
second). Called as ``python -m benchmarks.report --growth`` (see :func:`main`).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

LABELS = {"sqlite": "SQLite", "mysql": "MariaDB", "postgresql": "PostgreSQL"}
BACKENDS = tuple(LABELS)


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One size-dependent benchmark: its measured paths and the baselines of its floor."""

    name: str
    title: str
    #: ``extra_info["what"]`` of each measured path -> its label, in table order.
    paths: dict[str, str]
    #: The baseline formulations; the faster at each size is the floor.
    floor: tuple[str, ...]
    floor_label: str


BENCHMARKS = (
    Benchmark(
        "backfill",
        "backfill of the legacy groups",
        {"backfill-50": "backfill, batch 50", "backfill-1000": "backfill, batch 1000"},
        ("plain-copy-core", "plain-copy-dbapi", "plain-copy-stream"),
        "plain copy (floor)",
    ),
    Benchmark(
        "diff",
        "diff-report of a clean deployment",
        {"diff-report": "diff-report"},
        ("scan-hash-dbapi", "scan-hash-core"),
        "fetch-and-hash (floor)",
    ),
)

#: Best seconds per (backend, what, groups).
Results = dict[tuple[str, str, int], float]


@dataclasses.dataclass(frozen=True)
class Curve:
    """One path's best seconds at each size measured, on one backend."""

    backend: str
    label: str
    seconds: dict[int, float]
    is_floor: bool = False

    @property
    def sizes(self) -> list[int]:
        return sorted(self.seconds)

    def exponent(self, small: int | None = None, large: int | None = None) -> float | None:
        """Return the growth exponent between two sizes (default: smallest and largest)."""
        small = self.sizes[0] if small is None else small
        large = self.sizes[-1] if large is None else large
        if small == large or small not in self.seconds or large not in self.seconds:
            return None
        return exponent(small, self.seconds[small], large, self.seconds[large])


def exponent(n1: int, t1: float, n2: int, t2: float) -> float:
    """Return k such that t2 / t1 = (n2 / n1) ** k: 1 is linear growth, 2 quadratic."""
    return math.log(t2 / t1) / math.log(n2 / n1)


# --------------------------------------------------------------------------- reading


def load(paths: Iterable[Path]) -> tuple[Results, int]:
    """Return the best seconds in ``paths``, and how many results were skipped.

    A later file's figure replaces an earlier one's for the same backend, path and size,
    so a re-run of one backend can be laid over a full run. Results without a size
    (``groups``; the older, single-size files) are skipped and counted.
    """
    results: Results = {}
    skipped = 0
    for path in paths:
        for bench in json.loads(path.read_text())["benchmarks"]:
            info = bench["extra_info"]
            if "what" not in info or "backend" not in info:
                continue  # another benchmark module's result (memory checks have none)
            if "groups" not in info:
                skipped += 1
                continue
            results[(info["backend"], info["what"], int(info["groups"]))] = float(
                bench["stats"]["min"]
            )
    return results, skipped


def curves(benchmark: Benchmark, results: Results) -> list[Curve]:
    """Return the floor and each path of ``benchmark`` per backend, in table order."""
    found = {b for (b, what, _) in results if what in benchmark.paths or what in benchmark.floor}
    order = {b: n for n, b in enumerate(BACKENDS)}
    out: list[Curve] = []
    for backend in sorted(found, key=lambda b: (order.get(b, len(order)), b)):
        for what, label in benchmark.paths.items():
            seconds = {n: t for (b, w, n), t in results.items() if b == backend and w == what}
            if seconds:
                out.append(Curve(backend, label, seconds))
        floor: dict[int, float] = {}
        for (b, w, n), t in results.items():
            if b == backend and w in benchmark.floor:
                floor[n] = min(floor.get(n, t), t)
        if floor:
            out.append(Curve(backend, benchmark.floor_label, floor, is_floor=True))
    return out


def floor_of(curves: Sequence[Curve], backend: str) -> Curve | None:
    """Return the floor curve of ``backend``, if it was measured."""
    return next((c for c in curves if c.backend == backend and c.is_floor), None)


# --------------------------------------------------------------------------- the table


def size_label(groups: int) -> str:
    """Render a size as the benchmarks' ids do: ``10k``, ``100k``."""
    return f"{groups // 1000}k" if groups % 1000 == 0 else f"{groups:,}"


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def rows(curves: Sequence[Curve]) -> tuple[list[str], list[list[str]]]:
    """Return the table's header and rows: seconds, exponents and ratios to the floor.

    The columns follow every size found in ``curves``; a path not measured at a size shows
    ``-`` there. The first exponent spans the path's own smallest and largest sizes, and
    names them when they are not the table's; the others span consecutive sizes (shown
    when there are more than two).
    """
    sizes = sorted({n for c in curves for n in c.seconds})
    steps = list(itertools.pairwise(sizes)) if len(sizes) > 2 else []
    span = f"{size_label(sizes[0])} to {size_label(sizes[-1])}" if sizes else ""
    header = [
        "backend",
        "path",
        *(f"{size_label(n)} (s)" for n in sizes),
        f"exponent {span}",
        *(f"exponent {size_label(a)} to {size_label(b)}" for a, b in steps),
        *(f"rate / floor {size_label(n)}" for n in sizes),
    ]
    body: list[list[str]] = []
    for curve in curves:
        overall = _number(curve.exponent(), ".2f")
        own = curve.sizes
        if len(own) > 1 and (own[0], own[-1]) != (sizes[0], sizes[-1]):
            overall += f" ({size_label(own[0])} to {size_label(own[-1])})"
        floor = None if curve.is_floor else floor_of(curves, curve.backend)
        ratios = [
            floor.seconds[n] / curve.seconds[n]
            if floor is not None and n in floor.seconds and n in curve.seconds
            else None
            for n in sizes
        ]
        body.append(
            [
                LABELS.get(curve.backend, curve.backend),
                curve.label,
                *(_number(curve.seconds.get(n), ".3f") for n in sizes),
                overall,
                *(_number(curve.exponent(a, b), ".2f") for a, b in steps),
                *(_number(r, ".2f") for r in ratios),
            ]
        )
    return header, body


def table(curves: Sequence[Curve]) -> str:
    """Render :func:`rows` as a Markdown table, figures aligned right."""
    header, body = rows(curves)
    align = ["---", "---", *["---:"] * (len(header) - 2)]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, align, *body])


# --------------------------------------------------------------------------- the plot


def plot(benchmark: Benchmark, curves: Sequence[Curve], out: Path) -> None:
    """Draw seconds against groups, log-log, one panel per backend, one line per path.

    Beside each path a dotted line of slope 1 starts from its smallest size: a path that
    grows linearly runs along its dotted twin, one that grows faster climbs away from it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator

    backends = list(dict.fromkeys(c.backend for c in curves))
    sizes = sorted({n for c in curves for n in c.seconds})
    colours = {label: f"C{i}" for i, label in enumerate(dict.fromkeys(c.label for c in curves))}
    fig, axes = plt.subplots(
        1,
        len(backends),
        figsize=(4.6 * len(backends) + 0.6, 4.4),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    for ax, backend in zip(axes[0], backends, strict=True):
        for curve in (c for c in curves if c.backend == backend):
            xs = curve.sizes
            ys = [curve.seconds[n] for n in xs]
            k = curve.exponent()
            name = curve.label + ("" if k is None else f"  (k = {k:.2f})")
            colour = colours[curve.label]
            ax.plot(
                xs,
                ys,
                "--" if curve.is_floor else "-",
                marker="o",
                color=colour,
                linewidth=1.8,
                label=name,
            )
            if len(xs) > 1:
                ends = [xs[0], xs[-1]]
                ax.plot(
                    ends,
                    [ys[0] * n / xs[0] for n in ends],
                    ":",
                    color=colour,
                    linewidth=1.1,
                    alpha=0.8,
                )
        ax.plot([], [], ":", color="grey", label="slope 1 (linear) from the smallest size")
        measured = {n for c in curves if c.backend == backend for n in c.seconds}
        missing = [size_label(n) for n in sizes if n not in measured]
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(sizes))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([size_label(n) for n in sizes])
        # The same span on every panel, so that equal slopes look equal.
        ax.set_xlim(sizes[0] / 1.15, sizes[-1] * 1.15)
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y:g}"))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("deployment size (groups)")
        title = LABELS.get(backend, backend)
        ax.set_title(f"{title} ({', '.join(missing)} not measured)" if missing else title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[0][0].set_ylabel("best round (s), log scale")
    fig.suptitle(
        f"{benchmark.title}: time against deployment size, log-log"
        " (time ~ groups^k; k = 1 is linear, 2 quadratic)"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str]) -> None:
    """Print a growth table per benchmark found in the files and draw its plot.

    ``--plots DIR`` (default ``docs``) receives ``<benchmark>_growth.png``; ``--no-plot``
    prints the tables only.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report --growth")
    parser.add_argument("results", nargs="+", type=Path, help="pytest-benchmark JSON files")
    parser.add_argument("--plots", type=Path, default=Path("docs"), help="where the PNGs go")
    parser.add_argument("--no-plot", action="store_true", help="print the tables only")
    args = parser.parse_args(argv)
    results, skipped = load(args.results)
    if skipped:
        print(f"skipped {skipped} results without a deployment size (groups)", file=sys.stderr)
    shown = 0
    for benchmark in BENCHMARKS:
        found = curves(benchmark, results)
        if not found:
            continue
        if shown:
            print()
        shown += 1
        print(f"{benchmark.title}: best round (s), growth exponents, rate / floor:\n")
        print(table(found))
        if not args.no_plot:
            args.plots.mkdir(parents=True, exist_ok=True)
            out = args.plots / f"{benchmark.name}_growth.png"
            plot(benchmark, found, out)
            print(f"\n![{benchmark.title}: time against deployment size]({out})")
    if not shown:
        sys.exit("no size-dependent benchmark (backfill, diff-report) in the given files")
