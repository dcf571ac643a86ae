"""The tasks as data: suite names and short task name -> (suite, gym id, episode length). It imports nothing, so
the config checks read it without TorchRL or the simulators."""

SUITES = ("bullet", "safety_gymnasium", "gymnasium")  # gymnasium: any env with a cost (env=custom)

#: Short task name -> (suite, gym id, episode length). Lengths are the gym registries' ``max_episode_steps``.
TASKS: dict[str, tuple[str, str, int]] = {
    # Bullet-Safety-Gym 1.4.0, the CCPO paper's tasks.
    "ball_circle": ("bullet", "SafetyBallCircle-v0", 200),
    "car_circle": ("bullet", "SafetyCarCircle-v0", 300),
    "drone_circle": ("bullet", "SafetyDroneCircle-v0", 300),
    "drone_run": ("bullet", "SafetyDroneRun-v0", 200),
    "ant_run": ("bullet", "SafetyAntRun-v0", 200),
    "ball_run": ("bullet", "SafetyBallRun-v0", 100),
    "car_run": ("bullet", "SafetyCarRun-v0", 200),
    "ant_circle": ("bullet", "SafetyAntCircle-v0", 500),  # the CPO paper's Ant-Circle analogue
    # Safety-Gymnasium 1.0.0.
    "point_circle": ("safety_gymnasium", "SafetyPointCircle1-v0", 500),
    "car_circle_sg": ("safety_gymnasium", "SafetyCarCircle1-v0", 500),
    "point_run": ("safety_gymnasium", "SafetyPointRun0-v0", 500),
    "ant_velocity": ("safety_gymnasium", "SafetyAntVelocity-v1", 1000),
    "half_cheetah_velocity": ("safety_gymnasium", "SafetyHalfCheetahVelocity-v1", 1000),
}
