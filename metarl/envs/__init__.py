"""Batched, task-parameterised environments and their gymnasium views."""
