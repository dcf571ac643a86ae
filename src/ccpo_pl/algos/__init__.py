"""Safe-RL algorithm families: the maths (`equations.py`) and the LightningModule (`module.py`) of each."""
