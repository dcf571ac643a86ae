"""Off-policy Lagrangian baselines of the CCPO paper: V-SAC-Lag and V-DDPG-Lag (threshold-conditioned SAC-Lag and
DDPG-Lag, one Lagrange multiplier per behaviour threshold)."""
