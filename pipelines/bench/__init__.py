"""The benchmarks behind ``metarl bench``: commands that print tables, not pipeline stages.

``sampler`` (env-steps/s against gymnasium), ``maml`` (MAML on 2D navigation, with
``maml_reference`` running pytorch-maml-rl beside it), ``baselines`` (RL²'s classic baselines
beside the paper's tables) and ``rl2`` (RL² on the paper's cells; ``benchmarks/rl2/`` runs it
as a DVC pipeline). None of them needs MLflow, Prefect, DVC or Optuna.
"""
