"""CCPO (Yao, Liu et al., NeurIPS 2023): versatile safe RL by conditioned variational inference over cost thresholds."""
