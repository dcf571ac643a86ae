"""HazardPoint: a point that must reach a goal while a hazard disc on the straight path costs 1 per step inside it.

A pure-numpy gymnasium env with a cost, the smallest task `env=custom` trains on. The point starts near (-1, 0), the
goal is at (1, 0) and the hazard is the disc of radius 0.5 around the origin. Each step moves the point by
`step_size * action`, the action (in [-1, 1]^2) shortened to length 1 where it is longer. The reward is
`1 - distance to the goal / 2` per step (about 0 at the start, 1 at the goal), so reaching the goal early pays; the
cost is 1 for every step that ends inside the hazard, reported in `info["cost"]`. The straight path takes 20 steps,
about 10 of them in the hazard; around it takes about 23 and costs nothing: the lower the cost threshold, the wider
the detour. The env has no time limit of its own: `env.max_episode_steps` ends its episodes.

Observation (float32, 6): the point's position, the vector to the goal, the vector to the hazard's centre.

Train and evaluate it from the repository root (`python -m` puts the working directory on the import path):

    python -m ccpo_pl.fit env=custom env.id=examples.hazard_point:HazardPoint env.name=hazard_point
    python -m ccpo_pl.evaluate run=logs/hazard_point-ccpo-s0 eps='[3,7]'
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

START = np.array([-1.0, 0.0])
GOAL = np.array([1.0, 0.0])
HAZARD = np.array([0.0, 0.0])


class HazardPoint(gym.Env):
    """The point, the goal and the hazard (see the module docstring).

    Args:
        step_size: the length of the longest move in one step.
        hazard_radius: the radius of the hazard disc around the origin.
        start_noise: the start is drawn uniformly within this distance of (-1, 0) along each axis.
    """

    metadata = {"render_modes": []}

    def __init__(self, step_size: float = 0.1, hazard_radius: float = 0.5, start_noise: float = 0.1):
        self.step_size, self.hazard_radius, self.start_noise = step_size, hazard_radius, start_noise
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (6,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._pos = START.copy()

    def _observation(self) -> np.ndarray:
        return np.concatenate([self._pos, GOAL - self._pos, HAZARD - self._pos]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._pos = START + self.np_random.uniform(-self.start_noise, self.start_noise, 2)
        return self._observation(), {}

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict]:
        move = np.asarray(action, dtype=np.float64)
        self._pos = self._pos + self.step_size * move / max(1.0, float(np.linalg.norm(move)))
        reward = 1.0 - float(np.linalg.norm(GOAL - self._pos)) / 2.0
        cost = float(np.linalg.norm(self._pos - HAZARD) < self.hazard_radius)
        return self._observation(), reward, False, False, {"cost": cost}
