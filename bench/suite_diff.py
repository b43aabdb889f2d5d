"""What a change did to the accuracy suite, figure by figure: two `bench/suite_bench.py
--json-out` files (before, after) in; the figures that moved, the drops, and a summary out.

No change may lower a figure of the suite (docs/fit.md), and on the CPU the figures are only
comparable within one machine and library set, so both files should come from the same machine
and session (their rows record `versions` and `openblas_env`; a mismatch is reported). Rows are
matched by clip, prior source, preset and size; what the runs differ in (`--set`, the DIS preset,
the fit seed, the code) is the change measured. The floor's figures are compared too: they move
only when the flow does.

    .venv/bin/python bench/suite_diff.py before.json after.json
    .venv/bin/python bench/suite_diff.py before.json after.json --tolerance aj=0.002 psnr=0.1
    .venv/bin/python bench/suite_diff.py before.json after.json --spread before_seed1.json

`--spread` takes runs of the code before the change at other fit seeds (`suite_bench.py --seed
N`): a figure's drop then counts only beyond how far that row's figure moves by the seed alone.

Exit status 1 when a figure dropped by more than its tolerance (0 unless given), 2 on bad
input, else 0.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from services.common.errors import InvalidArgumentError
from services.evaluation.fit_suite import FIT_FIGURES, FLOOR_FIGURES
from services.fit.config import preset_with

_PERCENT = ("ate_share", "ate_depths")  # shown as a percentage, as the suite's table does


@dataclass
class SuiteDiff:
    """Compare two runs of the accuracy suite."""

    before: tyro.conf.Positional[Path]
    """`suite_bench.py --json-out` of the code (or setting) before the change."""
    after: tyro.conf.Positional[Path]
    """The same suite after it."""
    tolerance: tuple[str, ...] = ()
    """name=value per figure (names: the keys of fit_suite.FIT_FIGURES): a drop of at most that
    much is listed but not counted against the change (exit status)."""
    spread: tuple[Path, ...] = ()
    """Runs of the code before the change with the same settings at other fit seeds: a drop of at
    most the row's seed spread (largest minus smallest of that figure over `before` and these
    runs) is listed but not counted, as a drop within --tolerance is (the larger applies)."""


# What a row was run with besides its fit configuration and seed: runs whose rows differ in
# these are not seeds of one code and setting.
_STAGE_FIELDS = (
    "dis_preset",
    "flow_settings",
    "depth_settings",
    "segment_settings",
    "two_pass_depth",
    "best_tracks",
)


@dataclass(frozen=True)
class FigureChange:
    """One figure of one row, before and after."""

    row: str
    figure: str
    before: float
    after: float

    @property
    def loss(self) -> float:
        """How much worse the figure got (negative: better), in its own units."""
        if FIT_FIGURES.get(self.figure, True):  # the floor's TAP-Vid figures: higher is better
            return self.before - self.after
        return self.after - self.before

    def beyond(self, tolerances: Tolerances) -> bool:
        """Whether it dropped by more than it may (`Tolerances.allowed`)."""
        return self.loss > tolerances.allowed(self)


@dataclass(frozen=True)
class Tolerances:
    """How far a figure may drop without counting against the change: `by_figure` (--tolerance)
    for every row, `by_row` per (row, figure) (the seed spread of --spread); the larger applies,
    0 where neither is given."""

    by_figure: dict[str, float] = field(default_factory=dict)
    by_row: dict[tuple[str, str], float] = field(default_factory=dict)

    def allowed(self, change: FigureChange) -> float:
        return max(
            self.by_figure.get(change.figure, 0.0),
            self.by_row.get((change.row, change.figure), 0.0),
        )

    def describe(self) -> str:
        parts = [f"{name} {value:g}" for name, value in self.by_figure.items()]
        if self.by_row:
            parts.append("each row's seed spread")
        return ", ".join(parts) or "none given"


def row_key(row: dict) -> str:
    return f"{row['clip']} {row['source']} {row['preset']} {row['size']}"


def _rows_by_key(rows: list[dict], field: str) -> dict[str, dict]:
    keyed: dict[str, dict] = {}
    for row in rows:
        key = row_key(row)
        if key in keyed:
            raise InvalidArgumentError(field, f"row {key!r} appears twice; give one run per file")
        keyed[key] = row
    return keyed


def compare(
    before_rows: list[dict], after_rows: list[dict], figures: tuple[str, ...]
) -> list[FigureChange]:
    """Every named figure of every row present in both runs (pairs with a NaN, e.g. the path
    share of a camera without a path, are left out); `unmatched_rows` names the others."""
    before = _rows_by_key(before_rows, "before")
    after = _rows_by_key(after_rows, "after")
    common = [key for key in before if key in after]
    if not common:
        raise InvalidArgumentError(
            "after",
            "the runs share no row (clip, priors, preset, size); run the suite with the same "
            "--clips, --sources, --presets and size",
        )
    changes = []
    for key in common:
        for figure in figures:
            old, new = float(before[key][figure]), float(after[key][figure])
            if not (math.isnan(old) or math.isnan(new)):
                changes.append(FigureChange(key, figure, old, new))
    return changes


def unmatched_rows(before_rows: list[dict], after_rows: list[dict]) -> list[str]:
    """Notes naming the rows only one run holds (left out of the comparison)."""
    before = {row_key(r) for r in before_rows}
    after = {row_key(r) for r in after_rows}
    notes = []
    for name, only in (("before", before - after), ("after", after - before)):
        if only:
            notes.append(f"rows only {name}, not compared: {', '.join(sorted(only))}")
    return notes


def _run_differences(before: dict, other: dict) -> list[str]:
    """How two rows' runs differ besides the fit seed: the fit configurations their preset and
    --set make (a setting that restates a default is no change), then the other stages' fields."""
    fits = [
        dataclasses.asdict(preset_with(row["preset"], tuple(row.get("settings", ())), seed=0))
        for row in (before, other)
    ]
    differences = [
        f"{name}={fits[1][name]!r} against {value!r}"
        for name, value in fits[0].items()
        if fits[1][name] != value
    ]
    differences += [
        f"{name}={other.get(name)!r} against {before.get(name)!r}"
        for name in _STAGE_FIELDS
        if other.get(name) != before.get(name)
    ]
    return differences


def seed_spreads(
    before_rows: list[dict], spread_runs: list[list[dict]], figures: tuple[str, ...]
) -> dict[tuple[str, str], float]:
    """Per (row, figure): the largest minus the smallest value over `before` and the runs of the
    same code at other seeds that hold the row (NaNs left out). Raises when a spread run's row
    was run with other settings than `before`'s (then it measures a change, not the seed)."""
    before = _rows_by_key(before_rows, "before")
    runs = [_rows_by_key(rows, "spread") for rows in spread_runs]
    spreads = {}
    for key, row in before.items():
        same_row = [row]
        for run in runs:
            if key not in run:
                continue
            differences = _run_differences(row, run[key])
            if differences:
                raise InvalidArgumentError(
                    "spread",
                    f"row {key!r} was run with other settings there than before "
                    f"({'; '.join(differences)}); give runs of the before code and settings at "
                    "other --seed values",
                )
            same_row.append(run[key])
        for figure in figures:
            values = [float(r[figure]) for r in same_row if not math.isnan(float(r[figure]))]
            spreads[(key, figure)] = max(values) - min(values) if values else 0.0
    return spreads


def parse_tolerances(items: tuple[str, ...]) -> dict[str, float]:
    """name=value pairs to {figure: allowed drop}."""
    tolerances = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in FIT_FIGURES:
            raise InvalidArgumentError(
                "tolerance", f"{item!r}: expected name=value with name one of {list(FIT_FIGURES)}"
            )
        try:
            allowed = float(value)
        except ValueError:
            allowed = math.nan
        if not allowed >= 0:
            raise InvalidArgumentError("tolerance", f"{item!r}: the value must be a number >= 0")
        tolerances[name] = allowed
    return tolerances


def _value(figure: str, value: float, signed: bool = False) -> str:
    sign = "+" if signed else ""
    if figure in _PERCENT:
        return f"{100 * value:{sign}.4f} %"
    return f"{value:{sign}.2f}" if figure == "psnr" else f"{value:{sign}.4f}"


def drops(changes: list[FigureChange], tolerances: Tolerances) -> list[FigureChange]:
    """The changes that lowered a figure by more than its tolerance."""
    return [c for c in changes if c.beyond(tolerances)]


def report(
    changes: list[FigureChange],
    floor_changes: list[FigureChange],
    tolerances: Tolerances,
    notes: list[str],
) -> str:
    """Markdown: the moved figures, then what the change did in sum."""
    moved = [c for c in changes if c.loss != 0]
    counted = drops(changes, tolerances)
    lines = ["| row | figure | before | after | change | |", "|---|---|---|---|---|---|"]
    for c in moved:
        verdict = ""
        if c.loss > 0:
            verdict = (
                "**drop**"
                if c.beyond(tolerances)
                else f"drop within tolerance ({_value(c.figure, tolerances.allowed(c))})"
            )
        lines.append(
            f"| {c.row} | {c.figure} | {_value(c.figure, c.before)} | {_value(c.figure, c.after)}"
            f" | {_value(c.figure, c.after - c.before, signed=True)} | {verdict} |"
        )
    up = sum(c.loss < 0 for c in changes)
    down = sum(c.loss > 0 for c in changes)
    lines += [
        "",
        f"{len(changes)} figures compared: {up} better, {down} worse, "
        f"{len(changes) - up - down} equal; {len(counted)} drops beyond the tolerance "
        f"({tolerances.describe()}).",
    ]
    for figure in FIT_FIGURES:
        worst = max((c for c in changes if c.figure == figure), key=lambda c: c.loss, default=None)
        if worst is not None and worst.loss > 0:
            lines.append(
                f"- largest drop of {figure}: "
                f"{_value(figure, worst.after - worst.before, signed=True)} ({worst.row})"
            )
    floor_moved = [c for c in floor_changes if c.loss != 0]
    if floor_moved:
        lines.append(
            f"- the floor moved in {len(floor_moved)} figures (the flow differs between the runs)"
        )
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines)


def environment_notes(before_rows: list[dict], after_rows: list[dict]) -> list[str]:
    """Where the runs' library versions or OpenBLAS settings differ (CPU figures move with
    them, docs/fit.md): the comparison then measures the machine as well as the change."""
    notes = []
    for part in ("versions", "openblas_env"):
        seen_before = {json.dumps(r.get(part), sort_keys=True) for r in before_rows}
        seen_after = {json.dumps(r.get(part), sort_keys=True) for r in after_rows}
        if seen_before != seen_after:
            notes.append(f"{part} differ between the runs: {sorted(seen_before | seen_after)}")
    return notes


def _load(path: Path, field: str) -> list[dict]:
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(field, f"{path}: not a suite_bench JSON file ({exc})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "clip" in r for r in rows):
        raise InvalidArgumentError(field, f"{path}: expected the list of rows --json-out writes")
    return rows


def main(args: SuiteDiff) -> int:
    try:
        before_rows, after_rows = _load(args.before, "before"), _load(args.after, "after")
        spread_runs = [_load(path, "spread") for path in args.spread]
        tolerances = Tolerances(
            parse_tolerances(args.tolerance),
            seed_spreads(before_rows, spread_runs, tuple(FIT_FIGURES)) if spread_runs else {},
        )
        changes = compare(before_rows, after_rows, tuple(FIT_FIGURES))
        floor_changes = compare(before_rows, after_rows, FLOOR_FIGURES)
    except InvalidArgumentError as exc:
        print(f"suite_diff: {exc}", file=sys.stderr)
        return 2
    notes = unmatched_rows(before_rows, after_rows) + environment_notes(before_rows, after_rows)
    print(report(changes, floor_changes, tolerances, notes))
    return 1 if drops(changes, tolerances) else 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(SuiteDiff)))
