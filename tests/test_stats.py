import math

import pytest

from llmapps.evaluate.stats import bootstrap_ci, paired_bootstrap


def test_bootstrap_interval_contains_mean_and_is_seeded():
    values = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    a = bootstrap_ci(values, seed=3)
    assert a.mean == pytest.approx(0.7)
    assert a.low <= a.mean <= a.high
    assert a == bootstrap_ci(values, seed=3)
    assert a.n == 10


def test_missing_values_are_dropped_and_tiny_samples_are_points():
    a = bootstrap_ci([None, float("nan"), 0.5])
    assert (a.mean, a.low, a.high, a.n) == (0.5, 0.5, 0.5, 1)
    assert math.isnan(bootstrap_ci([]).mean)


def test_paired_difference_sees_a_consistent_gain_and_not_noise():
    a = [0.1 * i for i in range(20)]
    gain = paired_bootstrap(a, [x + 0.2 for x in a])
    assert gain.mean == pytest.approx(0.2) and gain.significant
    noise = paired_bootstrap(a, [x + (0.3 if i % 2 else -0.3) for i, x in enumerate(a)])
    assert not noise.significant and noise.low < 0 < noise.high


def test_paired_needs_equal_lengths():
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap([1.0], [1.0, 2.0])
