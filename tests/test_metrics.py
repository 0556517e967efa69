import math

import pytest

from pulse.domain import metrics

ACTUAL = [4, 0, 2, 6]
FORECAST = [3, 1, 2, 9]


def test_hand_computed_example():
    # errors: -1, +1, 0, +3 ; |e| sum = 5 ; actual sum = 12
    assert metrics.mae(ACTUAL, FORECAST) == pytest.approx(5 / 4)
    assert metrics.rmse(ACTUAL, FORECAST) == pytest.approx(math.sqrt((1 + 1 + 0 + 9) / 4))
    assert metrics.wape(ACTUAL, FORECAST) == pytest.approx(5 / 12)
    assert metrics.bias(ACTUAL, FORECAST) == pytest.approx(3 / 4)


def test_coverage_counts_inclusive_bounds():
    assert metrics.coverage([1, 2, 3, 4], [1, 0, 4, 0], [1, 1, 5, 4]) == pytest.approx(0.5)


def test_wape_of_nothing_is_nan_and_shapes_must_match():
    assert math.isnan(metrics.wape([0, 0], [1, 1]))
    with pytest.raises(ValueError):
        metrics.mae([1, 2], [1])
