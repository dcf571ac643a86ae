"""Linear-combination baselines of the CCPO paper: C-PPO-Lag and C-TRPO-Lag (one Lagrangian policy per behaviour
threshold, combined for any eps by pi(.|eps) = w1 pi(.|eps_1) + w2 pi(.|eps_2))."""
