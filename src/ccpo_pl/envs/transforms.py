"""TorchRL transforms of our own: the per-episode cost threshold ``eps`` and ``cost`` as a reward entry.

Everything else the env pipeline needs (step counting, episode sums, dtype casts, action clipping) is a stock
TorchRL transform; see :func:`ccpo_pl.envs.make_env`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs.transforms import Transform

EPS_MODES = ("sample", "fixed")


class EpsSampler(Transform):
    """Transform that gives each env a cost threshold ``eps`` of shape ``[1]``, drawn anew only when it resets.

    ``eps`` is written at reset into the root tensordict and copied unchanged into ``("next", "eps")`` at every step,
    so it is constant within an episode and a value estimator reading ``eps`` sees it on next states too. On a
    partial reset (``"_reset"`` mask) only the resetting envs get a new value; the others keep theirs (TorchRL's
    ``EnvBase.reset`` merges the reset output into the caller's tensordict under the mask).
    The values are raw thresholds (episode-cost units), not normalised.

    Args:
        eps_values: the thresholds to choose from.
        mode: ``"sample"``: each resetting env draws uniformly from ``eps_values`` with torch's global RNG (so
            ``torch.manual_seed`` makes it reproducible). ``"fixed"``: env ``i`` always gets ``eps_values[i]``
            (the batch must have ``len(eps_values)`` envs); used for evaluation grids.
    """

    def __init__(self, eps_values: Sequence[float], mode: str = "sample"):
        super().__init__(in_keys=[], out_keys=["eps"])
        values = torch.as_tensor([float(v) for v in eps_values], dtype=torch.float32)
        if values.ndim != 1 or values.numel() == 0:
            raise ValueError(f"eps_values={list(eps_values)!r} must be a non-empty list of numbers")
        if mode not in EPS_MODES:
            raise ValueError(f"eps_mode={mode!r} is not one of {EPS_MODES}")
        self.mode = mode
        self.register_buffer("eps_values", values)

    def _new_eps(self, batch_size: torch.Size) -> torch.Tensor:
        """Returns fresh thresholds of shape ``[*batch_size, 1]``."""
        values = self.eps_values
        if self.mode == "fixed":
            if batch_size.numel() != values.numel():
                raise ValueError(
                    f"eps_mode='fixed' needs one eps per env: got eps_values={values.tolist()} for batch "
                    f"{list(batch_size)}"
                )
            return values.reshape(*batch_size, 1).clone()
        index = torch.randint(values.numel(), batch_size, device=values.device)
        return values[index].unsqueeze(-1)

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        # A value is drawn for every env; on a partial reset, EnvBase.reset (torchrl.envs.utils._update_during_reset)
        # keeps the caller's entries, eps included, wherever "_reset" is False. TransformedEnv hands transforms only
        # the reset and state keys, so the old eps is not visible here anyway.
        tensordict_reset.set("eps", self._new_eps(tensordict_reset.batch_size))
        return tensordict_reset

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        next_tensordict.set("eps", tensordict.get("eps"))
        return next_tensordict

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        observation_spec["eps"] = Bounded(
            low=self.eps_values.min().item(),
            high=self.eps_values.max().item(),
            shape=(*observation_spec.shape, 1),
            dtype=torch.float32,
            device=observation_spec.device,
        )
        return observation_spec


class CostToReward(Transform):
    """Transform that moves the simulator's ``cost`` from the observations into the reward entries.

    Both simulator suites deliver the per-step cost as a shape-``()`` observation (safety-gymnasium through TorchRL's
    ``SafetyGymnasiumEnv``, float64; bullet through our info reader). This transform makes it a float32 ``[1]``
    entry of the reward spec, like ``reward``, so that ``("next", "cost")`` is the cost of the transition and
    ``RewardSum(in_keys=["reward", "cost"])`` can sum it. The reset output does not carry ``cost``.
    With two reward entries, ``env.reward_key`` raises: always pass keys explicitly.
    """

    def __init__(self):
        super().__init__(in_keys=["cost"], out_keys=["cost"])

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        cost = next_tensordict.get("cost")
        next_tensordict.set("cost", cost.to(torch.float32).reshape(*next_tensordict.batch_size, 1))
        return next_tensordict

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return tensordict_reset.exclude("cost")

    def transform_output_spec(self, output_spec: Composite) -> Composite:
        output_spec = output_spec.clone()
        observation_spec = output_spec["full_observation_spec"]
        cost_spec = observation_spec["cost"]
        del observation_spec["cost"]
        output_spec["full_reward_spec"]["cost"] = Unbounded(
            shape=(*observation_spec.shape, 1), dtype=torch.float32, device=cost_spec.device
        )
        return output_spec


class EndOnNonFinite(Transform):
    """Transform that ends (``truncated``) the episode of every env whose step returned a NaN or inf observation,
    reward or cost, so that the value never reaches the policy or the simulator (bullet asserts on a NaN action).

    The transition itself is kept in the rollout; ``ccpo_pl.data.OffPolicyStream`` never stores it and reports it,
    and the module stops the run or counts it (``faults.on_nan``). Put it after ``CostToReward`` and
    ``StepCounter``: it reads ``("next", "cost")`` as a reward entry and extends the time-limit truncation.
    """

    KEYS = ("observation", "reward", "cost")

    def __init__(self):
        super().__init__(in_keys=[], out_keys=[])

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        shape = next_tensordict.batch_size
        bad = torch.stack([~torch.isfinite(next_tensordict.get(k)).reshape(*shape, -1).all(-1) for k in self.KEYS])
        bad = bad.any(0).unsqueeze(-1)
        if bool(bad.any()):
            for key in ("truncated", "done"):
                next_tensordict.set(key, next_tensordict.get(key) | bad)
        return next_tensordict
