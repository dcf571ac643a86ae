"""The training log's pieces: per-threshold tags, the mean training return, the policy's spread, the pending
update metrics a checkpoint carries."""

from __future__ import annotations

import math
import re

import pytest
import torch

from ccpo_pl.timing import WallClock
from ccpo_pl.training_log import PER_EPS_PATTERN, TrainingLog, episode_metrics, per_eps_tag, policy_spread


def test_per_eps_tags_put_the_threshold_last_under_the_metrics_group():
    assert per_eps_tag("multipliers/lam", 20.0) == "multipliers/lam/eps_20"
    assert per_eps_tag("critic/q_c", 12.5) == "critic/q_c/eps_12.5"
    pattern = re.escape("multipliers/lam") + PER_EPS_PATTERN  # the custom-scalars chart of one metric
    assert all(re.search(pattern, per_eps_tag("multipliers/lam", e)) for e in (10.0, 12.5, 60.0))
    assert not re.search(pattern, per_eps_tag("multipliers/lam_max", 10.0))
    assert not re.search(pattern, per_eps_tag("multipliers/eta", 10.0))


def test_episode_metrics_average_the_thresholds_that_ended_episodes():
    episodes = torch.tensor([[2.0, 10.0, 4.0], [0.0, 0.0, 0.0], [1.0, 7.0, 30.0]], dtype=torch.float64)
    metrics = episode_metrics([20.0, 40.0, 60.0], episodes)
    assert metrics["train/eps_20/episode_reward"] == 5.0 and metrics["train/eps_60/episode_cost"] == 30.0
    assert "train/eps_40/episode_reward" not in metrics  # no episode ended under 40
    assert metrics["train/episode_reward"] == pytest.approx((5.0 + 7.0) / 2)  # per threshold, not per episode
    assert metrics["train/episode_cost"] == pytest.approx((2.0 + 30.0) / 2)
    assert episode_metrics([20.0], torch.zeros(1, 3)) == {}


def test_policy_spread_is_the_mean_sigma_and_the_gaussian_entropy():
    scale = torch.tensor([[0.5, 2.0], [1.0, 1.0]])
    std, entropy = policy_spread(torch.distributions.Normal(torch.zeros(2, 2), scale)).tolist()
    assert std == pytest.approx(1.125)
    per_state = [sum(0.5 * math.log(2 * math.pi * math.e * s * s) for s in row) for row in scale.tolist()]
    assert entropy == pytest.approx(sum(per_state) / 2)
    loc = torch.tensor([[0.0, 0.0], [0.0, 0.0], [float("nan"), 0.0]])  # a corrupt state is left out
    bad = torch.cat([scale, torch.tensor([[float("nan"), 1.0]])])
    spread = policy_spread(torch.distributions.Normal(loc, bad, validate_args=False)).tolist()
    assert spread == pytest.approx([(1.125 * 4 + 1.0) / 5, sum(per_state) / 2])


def test_update_metrics_accumulate_count_in_the_clock_and_round_trip_a_checkpoint():
    clock = WallClock()
    log = TrainingLog(clock)
    log.record_update(torch.tensor(2.0), torch.tensor(-1.0), 0.5)
    log.record_update(torch.tensor(4.0), torch.tensor(-3.0), 0.25)
    assert log.acc.tolist() == [6.0, -4.0, 0.75] and log.n_updates == 2
    assert clock.totals["update_s"] == 0.75 and clock.totals["updates"] == 2
    resumed = TrainingLog(WallClock())
    resumed.load_state_dict(log.state_dict())
    assert resumed.acc.tolist() == [6.0, -4.0, 0.75] and resumed.n_updates == 2
    log.acc.zero_()
    assert resumed.acc.tolist() == [6.0, -4.0, 0.75]  # a copy, not the live accumulator
