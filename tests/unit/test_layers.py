"""The package's layers: lower modules never import upper ones, and no import cycles."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import REPO, imported_modules

PACKAGE = REPO / "metarl"

LAYERS = [
    ("config", "logging"),
    ("envs",),
    ("tasks", "families"),
    ("policies", "history", "sampler", "returns", "training", "buffers", "offpolicy"),
    ("algos.base", "recurrent", "baselines", "evaluation"),
    ("algos", "checkpoint", "api"),
]
"""Bottom to top: a module may import its own layer and those below (``envs`` names the
package ``metarl.envs``, and so on)."""


def _module(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def module_imports() -> dict[str, set[str]]:
    """metarl module → the metarl modules it imports at module level (not inside functions)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {m for m in imported_modules(path, module_level_only=True)
                       if m in modules and m != name}
    return graph


def layer(module: str) -> int:
    rel = module.removeprefix("metarl.")
    best, level = -1, -1
    for i, names in enumerate(LAYERS):
        for n in names:
            if (rel == n or rel.startswith(n + ".")) and len(n) > best:
                best, level = len(n), i
    assert level >= 0, f"{module} is in no layer: add it to LAYERS"
    return level


def test_no_module_imports_a_layer_above_it() -> None:
    upward = [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
              for m, deps in module_imports().items() if m != "metarl"
              for d in deps if layer(d) > layer(m)]
    assert not upward, upward


def test_envs_know_nothing_of_policies_or_rollouts() -> None:
    graph = module_imports()
    for module, deps in graph.items():
        if module.startswith("metarl.envs"):
            assert {d for d in deps if not d.startswith(("metarl.envs", "metarl.config"))} \
                == set(), (module, deps)


def test_no_import_cycles() -> None:
    graph = module_imports()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError(" -> ".join([*path, node, dep]))
            if dep not in state:
                visit(dep, [*path, node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
