"""The fine-grid sweep's metrics (`metrics.sweep_grid`, `monotone_within_noise`, `sweep_summary`) on hand cases."""

import math

import pytest
import torch

from ccpo_pl.metrics import monotone_within_noise, sweep_grid, sweep_summary


def test_the_grid_covers_the_range_every_step_and_two_steps_beyond_each_end():
    assert sweep_grid([10, 70]) == [5.0, 7.5] + [10 + 2.5 * i for i in range(25)] + [72.5, 75.0]
    assert sweep_grid([5, 50], step=5, ends=1) == [5.0 * i for i in range(1, 12)]  # 0 is dropped, 55 kept


def test_a_rise_is_monotone_and_a_drop_beyond_two_standard_errors_is_not():
    eps = [10, 20, 30]
    assert monotone_within_noise(eps, [0.0, 5.0, 30.0], [1.0, 1.0, 1.0]) == (True, 0.0)
    # 30 -> 26 at eps 20 -> 30 with standard errors 1 and 1: a drop of 4 / sqrt(2) = 2.83 standard errors
    ok, drop = monotone_within_noise(eps, [0.0, 30.0, 26.0], [1.0, 1.0, 1.0])
    assert not ok and drop == pytest.approx(4 / math.sqrt(2))
    # the same drop with standard errors 2 and 2 is 1.41 of them: within noise
    ok, drop = monotone_within_noise(eps, [0.0, 30.0, 26.0], [1.0, 2.0, 2.0])
    assert ok and drop == pytest.approx(4 / math.sqrt(8))
    # unsorted input is read in eps order; a drop of noise-free means is never within noise
    assert monotone_within_noise([30, 10, 20], [26.0, 0.0, 30.0], [0.0, 0.0, 0.0]) == (False, math.inf)


def test_the_summary_finds_the_worst_violation_the_share_over_tolerance_and_a_fall():
    eps = [10.0, 20.0, 40.0, 50.0]
    # episode costs per threshold (3 episodes): means 0, 21, 60, 45 -> CV 0, 1, 20, 0; 60 -> 45 is a fall
    cost = torch.tensor([[0.0, 0.0, 0.0], [20.0, 21.0, 22.0], [59.0, 60.0, 61.0], [44.0, 45.0, 46.0]])
    s = sweep_summary(eps, cost)
    assert s["worst_cv"] == pytest.approx(20.0) and s["worst_cv_eps"] == 40.0
    assert s["worst_cv_rel"] == pytest.approx(0.5)
    assert s["share_violated"] == pytest.approx(1 / 4)  # CV 1 at eps 20 is within 10 %, CV 20 at 40 is not
    assert s["monotone"] is False and s["max_drop_se"] > 2
    ok = sweep_summary(eps, torch.tensor([[0.0] * 3, [19.0] * 3, [38.0] * 3, [50.0] * 3]))
    assert ok["worst_cv"] == 0.0 and ok["share_violated"] == 0.0 and ok["monotone"] is True
