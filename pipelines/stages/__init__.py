"""One module per pipeline stage; each exposes ``run(config, paths) -> dict``."""

STAGE_NAMES = ("tasks", "tune", "train", "evaluate", "register", "report")
"""The pipeline's stages, in order (:mod:`pipelines.runner` maps them to functions). Here, not
in :mod:`pipelines.settings`, so that ``metarl --help`` imports nothing heavy."""
