"""bench/suite_diff.py: which figures of the accuracy suite a change moved, in which direction
each counts as worse, and what it reports for runs that do not match."""

from __future__ import annotations

import json
import math

import pytest

from bench.suite_diff import (
    SuiteDiff,
    Tolerances,
    compare,
    drops,
    main,
    parse_tolerances,
    seed_spreads,
    unmatched_rows,
)
from services.common.errors import InvalidArgumentError
from services.evaluation.fit_suite import FIT_FIGURES, FLOOR_FIGURES


def suite_row(clip: str = "orbit", source: str = "pipeline", **figures: float) -> dict:
    row = {name: 0.5 for name in (*FIT_FIGURES, *FLOOR_FIGURES)}
    row.update(clip=clip, source=source, preset="fast", size="96x72x12")
    row.update(figures)
    return row


def test_each_figure_is_worse_in_its_own_direction():
    before = [suite_row(aj=0.30, psnr=39.0, ate_share=0.050, depth_abs_rel=0.27)]
    after = [suite_row(aj=0.33, psnr=38.5, ate_share=0.052, depth_abs_rel=0.26)]
    changes = {c.figure: c for c in compare(before, after, tuple(FIT_FIGURES))}
    assert changes["aj"].loss == pytest.approx(-0.03)  # higher AJ is better
    assert changes["psnr"].loss == pytest.approx(0.5)  # lower PSNR is worse
    assert changes["ate_share"].loss == pytest.approx(0.002)  # a larger camera error is worse
    assert changes["depth_abs_rel"].loss == pytest.approx(-0.01)
    assert {c.figure for c in drops(list(changes.values()), Tolerances())} == {
        "psnr",
        "ate_share",
    }


def test_a_tolerance_keeps_a_small_drop_out_of_the_count():
    before = [suite_row(aj=0.300), suite_row("pan", aj=0.600)]
    after = [suite_row(aj=0.299), suite_row("pan", aj=0.597)]
    changes = compare(before, after, ("aj",))
    assert len(drops(changes, Tolerances())) == 2
    assert [c.row for c in drops(changes, Tolerances(parse_tolerances(("aj=0.002",))))] == [
        "pan pipeline fast 96x72x12"
    ]


def test_a_seed_spread_keeps_a_drop_within_it_out_of_the_count_row_by_row():
    before = [suite_row(aj=0.300, seed=0), suite_row("pan", aj=0.600, seed=0)]
    seed1 = [suite_row(aj=0.296, seed=1), suite_row("pan", aj=0.600, seed=1)]
    seed2 = [suite_row(aj=0.301, seed=2)]  # a run may hold fewer rows
    after = [suite_row(aj=0.297), suite_row("pan", aj=0.599)]
    spreads = seed_spreads(before, [seed1, seed2], ("aj", "psnr"))
    assert spreads[("orbit pipeline fast 96x72x12", "aj")] == pytest.approx(0.005)
    assert spreads[("pan pipeline fast 96x72x12", "aj")] == 0.0
    assert spreads[("orbit pipeline fast 96x72x12", "psnr")] == 0.0
    changes = compare(before, after, ("aj",))
    # orbit fell 0.003, less than its seeds spread it; pan fell 0.001 where the seeds agree
    assert [c.row for c in drops(changes, Tolerances(by_row=spreads))] == [
        "pan pipeline fast 96x72x12"
    ]
    # the larger of a figure's tolerance and the row's spread applies
    both = Tolerances(parse_tolerances(("aj=0.002",)), spreads)
    assert drops(changes, both) == []
    assert both.allowed(changes[0]) == pytest.approx(0.005)


def test_a_spread_run_with_other_settings_is_an_error():
    before = [suite_row(settings=[], best_tracks=False)]
    restated = [suite_row(settings=["lambda_isotropic=10"], best_tracks=False, seed=1)]
    assert seed_spreads(before, [restated], ("aj",))  # the fast preset's own value: no change
    for other, named in (
        (
            suite_row(settings=["keep_adam_state=true"], best_tracks=False, seed=1),
            "keep_adam_state=True against False",
        ),
        (suite_row(settings=[], best_tracks=True, seed=1), "best_tracks=True against False"),
    ):
        with pytest.raises(InvalidArgumentError) as excinfo:
            seed_spreads(before, [[other]], ("aj",))
        assert excinfo.value.field == "spread"
        assert named in str(excinfo.value)


def test_rows_are_matched_by_name_and_nan_pairs_left_out():
    before = [suite_row("pan", ate_share=math.nan), suite_row("orbit", source="exact")]
    after = [suite_row("orbit", source="exact", aj=0.6), suite_row("pan", ate_share=math.nan)]
    changes = compare(before, after, ("aj", "ate_share"))
    assert sorted((c.row, c.figure) for c in changes) == [
        ("orbit exact fast 96x72x12", "aj"),
        ("orbit exact fast 96x72x12", "ate_share"),
        ("pan pipeline fast 96x72x12", "aj"),
    ]
    assert [c.after for c in changes if c.figure == "aj" and c.row.startswith("orbit")] == [0.6]


def test_rows_only_one_run_holds_are_named_and_no_common_row_is_an_error():
    before = [suite_row("orbit"), suite_row("pan")]
    after = [suite_row("orbit"), suite_row("static")]
    assert len(compare(before, after, ("aj",))) == 1
    assert unmatched_rows(before, after) == [
        "rows only before, not compared: pan pipeline fast 96x72x12",
        "rows only after, not compared: static pipeline fast 96x72x12",
    ]
    with pytest.raises(InvalidArgumentError) as excinfo:
        compare([suite_row("pan")], [suite_row("static")], ("aj",))
    assert excinfo.value.field == "after"
    with pytest.raises(InvalidArgumentError) as excinfo:
        compare([suite_row(), suite_row()], [suite_row()], ("aj",))
    assert excinfo.value.field == "before"


@pytest.mark.parametrize("item", ["speed=1", "aj", "aj=fast", "aj=-0.1"])
def test_a_bad_tolerance_names_the_field(item):
    with pytest.raises(InvalidArgumentError) as excinfo:
        parse_tolerances((item,))
    assert excinfo.value.field == "tolerance"


def test_main_reports_the_drops_and_exits_by_them(tmp_path, capsys):
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    before.write_text(json.dumps([suite_row(aj=0.30, psnr=39.0)]))
    after.write_text(json.dumps([suite_row(aj=0.35, psnr=38.9, naive_aj=0.4)]))
    assert main(SuiteDiff(before, after)) == 1
    out = capsys.readouterr().out
    assert "| orbit pipeline fast 96x72x12 | psnr | 39.00 | 38.90 | -0.10 | **drop** |" in out
    assert "1 better, 1 worse" in out
    assert "the floor moved in 1 figures" in out
    assert main(SuiteDiff(before, after, tolerance=("psnr=0.2",))) == 0
    assert "drop within tolerance" in capsys.readouterr().out
    seed1 = tmp_path / "before_seed1.json"
    seed1.write_text(json.dumps([suite_row(aj=0.30, psnr=38.8, seed=1)]))
    assert main(SuiteDiff(before, after, spread=(seed1,))) == 0
    out = capsys.readouterr().out
    assert "| psnr | 39.00 | 38.90 | -0.10 | drop within tolerance (0.20) |" in out
    assert "(each row's seed spread)" in out
    after.write_text("{}")
    assert main(SuiteDiff(before, after)) == 2
    assert "after:" in capsys.readouterr().err
