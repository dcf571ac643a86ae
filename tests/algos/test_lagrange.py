"""The shared Lagrange-multiplier updates (gradient and PID) on hand-computed sequences."""

from __future__ import annotations

import pytest
import torch

from ccpo_pl.algos.lagrange import LagrangeMultipliers, gradient_step, pid_step


def test_gradient_step_hand_sequence_with_clamps():
    lam, limit = torch.tensor([0.0, 9.0]), torch.tensor([3.0, 3.0])
    seq = []
    for cost in ([2.0, 6.0], [5.0, 1.0], [3.5, 2.0]):
        lam = gradient_step(lam, torch.tensor(cost), limit, lr=0.5, lam_max=10.0)
        seq.append(lam.tolist())
    # [0 - 0.5 -> 0, 9 + 1.5 -> 10], [0 + 1, 10 - 1], [1 + 0.25, 9 - 0.5]
    assert seq == [pytest.approx([0.0, 10.0]), pytest.approx([1.0, 9.0]), pytest.approx([1.25, 8.5])]


def test_pid_step_hand_sequence():
    kp, ki, kd = 0.5, 0.1, 2.0
    integral, prev = torch.tensor([0.0]), torch.tensor([10.0])
    out = []
    for cost in (14.0, 16.0, 8.0, 9.0):  # limit 10
        lam, integral, prev = pid_step(torch.tensor([cost]), 10.0, integral, prev, kp, ki, kd)
        out.append((lam.item(), integral.item()))
    # 1) delta 4, I 4, D max(0, 14-10)=4: 2 + 0.4 + 8 = 10.4
    # 2) delta 6, I 10, D 2: 3 + 1.0 + 4 = 8.0
    # 3) delta -2, I 8, D 0: -1 + 0.8 + 0 = -0.2 -> 0
    # 4) delta -1, I 7, D 1: -0.5 + 0.7 + 2 = 2.2
    assert out == [pytest.approx((10.4, 4.0)), pytest.approx((8.0, 10.0)), pytest.approx((0.0, 8.0)),
                   pytest.approx((2.2, 7.0))]


def test_pid_with_only_integral_gain_is_the_gradient_rule():
    gen = torch.Generator().manual_seed(0)
    costs = 20 + 10 * torch.randn(30, 3, generator=gen)
    grad = LagrangeMultipliers(3, "gradient", lam_init=0.5, lr=0.05, lam_max=1e9)
    pid = LagrangeMultipliers(3, "pid", lam_init=0.5, pid={"kp": 0.0, "ki": 0.05, "kd": 0.0}, lam_max=1e9)
    for cost in costs:
        torch.testing.assert_close(grad.update(cost, 20.0), pid.update(cost, 20.0))


def test_multipliers_update_only_the_indexed_constraints_and_are_checkpointed():
    mult = LagrangeMultipliers(3, "pid", pid={"kp": 1.0, "ki": 0.0, "kd": 0.0})
    mult.update(torch.tensor([5.0]), torch.tensor([2.0]), index=[1])
    assert mult.lam.tolist() == [0.0, 3.0, 0.0]
    # the first step of a constraint has no derivative kick: prev_cost starts at the first cost
    kd_only = LagrangeMultipliers(1, "pid", pid={"kp": 0.0, "ki": 0.0, "kd": 1.0})
    assert kd_only.update(torch.tensor([50.0]), 10.0).item() == 0.0
    assert kd_only.update(torch.tensor([53.0]), 10.0).item() == pytest.approx(3.0)
    assert set(mult.state_dict()) == {"lam", "integral", "prev_cost", "started"}
    with pytest.raises(ValueError, match="'newton'"):
        LagrangeMultipliers(2, "newton")


def test_multiplier_step_is_the_rule_of_its_method_and_the_first_pid_step_has_no_derivative_kick():
    from ccpo_pl.algos.lagrange import multiplier_step

    lam, cost = torch.tensor([0.5, 0.5]), torch.tensor([30.0, 30.0])
    integral, prev = torch.zeros(2), torch.tensor([0.0, 10.0])
    kw = dict(lr=0.1, lam_max=100.0, pid={"kp": 0.0, "ki": 0.0, "kd": 1.0})
    got = multiplier_step("gradient", lam, cost, 20.0, integral, prev, None, **kw)
    torch.testing.assert_close(got[0], gradient_step(lam, cost, 20.0, 0.1, 100.0))
    assert got[1] is integral and got[2] is prev  # the gradient rule keeps the PID state as it is
    lam_pid, _, new_prev = multiplier_step("pid", lam, cost, 20.0, integral, prev, torch.tensor([False, True]), **kw)
    assert lam_pid.tolist() == [0.0, 20.0]  # kd * max(0, J_c - J_c_prev): none on the first step, 30 - 10 after
    assert new_prev.tolist() == [30.0, 30.0]
