"""The study's statistics, against values computed by hand and by brute force."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from tidpo.studies.stats import (
    mean_interval,
    paired_bootstrap,
    paired_seeds,
    t_quantile,
    verdict,
)


def test_mean_interval_by_hand() -> None:
    got = mean_interval([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / math.sqrt(3)  # sd 1, t(2) = 4.303
    assert got["mean"] == 2.0 and got["n"] == 3
    assert got["low"] == pytest.approx(2.0 - half) and got["high"] == pytest.approx(2.0 + half)
    assert mean_interval([5.0])["low"] is None and mean_interval([])["mean"] is None
    assert t_quantile(1) == 12.706 and t_quantile(200) == 1.96


def test_paired_bootstrap_covers_zero_for_noise_and_not_for_a_shift() -> None:
    rng = random.Random(1)
    base = [[rng.gauss(0, 1) for _ in range(200)] for _ in range(3)]
    same = [[x + rng.gauss(0, 0.01) for x in run] for run in base]
    shifted = [[x + 0.5 for x in run] for run in base]
    none = paired_bootstrap(same, base)
    assert none["low"] <= 0 <= none["high"] and verdict(none) == "no detectable difference"
    up = paired_bootstrap(shifted, base)
    assert up["diff"] == pytest.approx(0.5) and up["low"] > 0.45 and verdict(up) == "better"
    assert verdict(up, higher_is_better=False) == "worse"


def test_paired_bootstrap_averages_seeds_per_item_and_drops_missing_items() -> None:
    a = [[1.0, None, 3.0], [3.0, 1.0, 3.0]]
    b = [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    got = paired_bootstrap(a, b, n_boot=500)
    # item means: a = 2, 1, 3; b = 0, 0, 1 -> diffs 2, 1, 2
    assert got["n_items"] == 3 and got["diff"] == pytest.approx(5 / 3)
    assert 1.0 <= got["low"] <= got["high"] <= 2.0


def test_paired_bootstrap_interval_matches_the_standard_error() -> None:
    """For many items the percentile interval is about mean +- 1.96 standard errors."""
    rng = random.Random(7)
    diffs = [rng.gauss(0.2, 1.0) for _ in range(400)]
    got = paired_bootstrap([diffs], [[0.0] * 400], n_boot=4000, seed=3)
    se = statistics.stdev(diffs) / math.sqrt(400)
    assert got["high"] - got["low"] == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_paired_seeds() -> None:
    got = paired_seeds([0.5, 0.55, 0.6], [0.4, 0.4, 0.4])  # diffs .1 .15 .2: t-interval > 0
    assert got["diff"] == pytest.approx(0.15) and got["n_seeds"] == 3
    assert verdict(got) == "better"
    wide = paired_seeds([0.5, 0.6, 0.7], [0.4, 0.4, 0.4])  # diffs .1 .2 .3: covers 0 at n=3
    assert verdict(wide) == "no detectable difference"
    assert verdict(paired_seeds([0.5], [0.4])) == "not enough data"
