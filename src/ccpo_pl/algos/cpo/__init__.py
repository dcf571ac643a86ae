"""Constrained Policy Optimization (Achiam, Held, Tamar & Abbeel, ICML 2017) and the paper's baselines.

- `equations`: the pure maths, in Algorithm 1's order: the constraint value c on the scale of b, the analytic
  single-constraint dual (eq. 12, all cases), the step of eq. (13) and the recovery step of eq. (14), the
  multi-constraint dual of eq. (12) solved numerically, the line-search test, and the cost-shaping target (§6.3).
- `module`: `CPO`, whose `variant` is CPO (`algo=cpo`) or one of the baselines sharing its trust-region step: PDO
  (`algo=pdo`, eq. 16), TRPO (`algo=trpo`), FPO (`algo=fpo`, fixed penalty); any of them with
  `algo.cost_shaping=true`.
- `build`: the module of `algo.name` from the composed config (`registry.AlgoSpec`).
- The trust-region pieces (CG, Fisher-vector products, line search) are `ccpo_pl.algos.trust_region`.

Tasks: the paper's Point-Circle and Ant-Circle (rllab) have analogues here in the Circle tasks of both suites:
Safety-Gymnasium `SafetyPointCircle1-v0` (`env=point_circle`) and `SafetyCarCircle1-v0` (`env=car_circle_sg`),
Bullet-Safety-Gym `SafetyBallCircle-v0`, `SafetyCarCircle-v0`, `SafetyDroneCircle-v0` (`env=ball_circle`,
`car_circle`, `drone_circle`). Bullet-Safety-Gym also registers `SafetyAntCircle-v0`, not yet a task of
`ccpo_pl.envs`. The paper's Humanoid-Circle and its Gather tasks (Point-Gather, Ant-Gather) exist in neither
library. The envs supply one cost signal (m = 1): the trainer always solves the single-constraint dual
analytically; eq. (12) for m > 1 is `equations.multi_constraint_dual_solution`, tested but not wired to an env.
"""
