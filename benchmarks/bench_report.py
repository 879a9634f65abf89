"""The benchmark's output: a table of measured operations and the targets as ratios, PASS or FAIL."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable

from bench_run import Series

MB = 1e6


@dataclasses.dataclass
class Row:
    """One measured operation of one case."""

    case: str
    op: str
    series: Series
    input_bytes: int            # bytes the operation processes (for MB/s)
    output_bytes: int | None = None
    meta_bytes: int | None = None


@dataclasses.dataclass
class Target:
    """``ours / theirs <= limit`` (or ``>=`` when ``at_least``)."""

    name: str
    ours: float
    theirs: float
    limit: float
    at_least: bool = False
    unit: str = "s"
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ours / self.theirs if self.theirs else float("inf")

    @property
    def passed(self) -> bool:
        return self.ratio >= self.limit if self.at_least else self.ratio <= self.limit


class Report:
    """Collects rows, targets and notes, and prints them."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Row] = {}
        self.targets: list[Target] = []
        self.notes: list[str] = []

    def row(self, case: str, op: str, input_bytes: int) -> Row:
        key = (case, op)
        if key not in self.rows:
            self.rows[key] = Row(case, op, Series(), input_bytes)
        return self.rows[key]

    def get(self, case: str, op: str) -> Row | None:
        row = self.rows.get((case, op))
        return row if row is not None and row.series.runs else None

    def note(self, text: str) -> None:
        self.notes.append(text)

    def target(self, name: str, ours: Row | float | None, theirs: Row | float | None,
               limit: float, at_least: bool = False,
               value: Callable[[Row], float] | None = None, unit: str = "s",
               note: str = "") -> None:
        """Add a target when both sides were measured; a note says why not otherwise."""
        def pick(x: Row | float | None) -> float | None:
            if x is None or isinstance(x, (int, float)):
                return x
            return value(x) if value else x.series.seconds
        a, b = pick(ours), pick(theirs)
        if a is None or b is None:
            self.note("target not evaluated (a side was not measured): %s" % name)
            return
        self.targets.append(Target(name, a, b, limit, at_least, unit, note))

    # -- output -------------------------------------------------------------
    def table(self) -> str:
        head = ("case", "operation", "wall s", "MB/s", "out bytes", "+manifest",
                "RSS MB", "runs")
        lines = [head]
        for row in self.rows.values():
            s = row.series
            if not s.runs:
                continue
            rate = row.input_bytes / MB / s.seconds if s.seconds > 0 else float("inf")
            lines.append((row.case, row.op, "%.3f" % s.seconds, "%.0f" % rate,
                          _n(row.output_bytes), _n(row.meta_bytes), "%.0f" % s.rss_mb,
                          str(len(s.runs))))
        return _format(lines)

    def target_table(self) -> str:
        head = ("target", "ours", "theirs", "ratio", "limit", "result")
        lines = [head]
        for t in self.targets:
            sign = ">=" if t.at_least else "<="
            lines.append((t.name, _v(t.ours, t.unit), _v(t.theirs, t.unit), "%.3f" % t.ratio,
                          "%s %.2f" % (sign, t.limit), "PASS" if t.passed else "FAIL"))
        return _format(lines)

    def render(self) -> str:
        parts = [self.table(), "", self.target_table()]
        if self.notes:
            parts += [""] + ["note: " + n for n in self.notes]
        for t in self.targets:
            if t.note:
                parts.append("note (%s): %s" % (t.name, t.note))
        return "\n".join(parts)


def finish(report: Report, name: str, broken: bool = False) -> int:
    """Print the report; the exit code: 2 when ``broken`` (a tool failed or a
    result differs, said on stderr), else 1 when a target failed, else 0."""
    print(report.render())
    if broken:
        print("%s: a tool failed or a result differs (see above)" % name, file=sys.stderr)
        return 2
    return 0 if all(t.passed for t in report.targets) else 1


def _n(value: int | None) -> str:
    return "-" if value is None else "{:,}".format(value)


def _v(value: float, unit: str) -> str:
    if unit == "B":
        return "{:,.0f}".format(value)
    if unit == "MB/s":
        return "%.0f MB/s" % value
    if unit == "MB":
        return "%.0f MB" % value
    return "%.3f s" % value


def _format(lines: list[tuple[str, ...]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for n, line in enumerate(lines):
        cells = [c.ljust(w) if i < 2 or n == 0 else c.rjust(w)
                 for i, (c, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
