"""The package's import graph: no circles, and lower layers never import higher ones.

Every ``import`` counts, the lazy ones inside functions too (a lazy import is still a
dependency). A submodule importing from its own package (``vllm_plugin/model_dir.py``
reading ``vllm_plugin.ARCHITECTURE``) is not a circle: the package runs first.
"""

from __future__ import annotations

import ast
from pathlib import Path

import motioncache_vllm

ROOT = Path(motioncache_vllm.__file__).parent
PKG = "motioncache_vllm"

# a module may import modules of its own layer or lower ones (DESIGN.md, layering)
LAYERS = [
    {"config", "limits", "metrics", "video_io", "motion", "data", "blocks", "policies", "models"},
    {"runtime"},
    {"api", "bench", "train", "vllm_plugin", "research"},
    {"fleet"},
    {"cli", "__init__"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = (PKG, *path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                if t in mods and t != name and not name.startswith(t + "."):  # own package: fine
                    deps.add(t)
        graph[name] = deps
    return graph


def _layer(module: str) -> int:
    top = module.split(".")[1] if module != PKG else "__init__"
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"{module}: add its top-level name to a layer in tests/test_layering.py")


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    cycles = []

    def visit(v: str, path: list[str]) -> None:
        state[v] = 1
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                cycles.append(path[path.index(w) :] + [w] if w in path else [v, w])
            elif w not in state:
                visit(w, [*path, w])
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            visit(v, [v])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_lower_layers_never_import_higher_ones():
    bad = [f"{m} imports {d}" for m, deps in _graph().items() for d in deps if _layer(d) > _layer(m)]
    assert not bad, "backward imports: " + "; ".join(sorted(bad))


def test_models_never_import_the_runtime():
    # the pipeline class does not call up: enable() swaps the instance's class instead
    bad = [f"{m} imports {d}" for m, deps in _graph().items() if ".models" in m for d in deps if ".runtime" in d]
    assert not bad, bad


def test_the_graph_sees_lazy_imports():
    # the check above must be able to fail: a lazy import inside a function is an edge
    assert "motioncache_vllm.runtime.stepwise" in _graph()["motioncache_vllm.vllm_plugin.worker"]
