"""The MLOps side of metarl: stages, CLI, DVC entry points, Prefect flows, tracking."""
