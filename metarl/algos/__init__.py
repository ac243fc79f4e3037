"""Meta-learning algorithms and the baselines they are compared with."""
