"""The library's import structure: layers that import only downward, no cycle, imports at the top.

Every module of ``bayes_klrl`` is parsed (not imported) and its ``import`` statements read: those at module level
(outside ``if TYPE_CHECKING:``) are the drawn structure; an import of a ``bayes_klrl`` module inside a function
hides an edge of it, allowed only where :data:`HIDDEN` names it with the reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import bayes_klrl

ROOT = Path(bayes_klrl.__file__).parent

#: each module's floor, bottom first; a module imports only from its own floor or below (the longest matching
#: prefix decides, so ``lm.smollm2`` sits above the rest of ``lm``)
LAYERS = (
    ("sequences", "storage", "config", "estimators", "lm.base", "_arviz"),
    ("lm",),
    ("lm.smollm2", "task", "tasks"),
    ("samples", "model", "exact", "modelfile"),
    ("training",),
    ("infer", "rl"),
    ("diagnostics",),
    ("methods",),
    ("compare",),
    ("sweep",),
    ("cli", "__main__", ""),
)
#: (importer, imported) pairs imported inside a function, and why
HIDDEN = {
    ("lm.hf", "lm.smollm2"): "a real cycle: the SmolLM2 loader builds an HFCausalLM (PEP 562 re-export)",
    ("infer.twists", "infer.smc"): "a real cycle: smc runs on twists, the learned twist's trainer runs smc",
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known) -> tuple[set[str], set[str]]:
    """``(top, hidden)``: the ``bayes_klrl`` modules ``name`` imports at module level and inside functions."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [p for p in package if p]
    top, hidden = set(), set()

    def targets(node):
        if isinstance(node, ast.Import):
            return [
                a.name.removeprefix("bayes_klrl").lstrip(".") for a in node.names if a.name.startswith("bayes_klrl")
            ]
        if node.level == 0 and not (node.module or "").startswith("bayes_klrl"):
            return []
        if node.level:
            base = package[: len(package) - (node.level - 1)] + ([node.module] if node.module else [])
        else:
            base = [p for p in node.module.removeprefix("bayes_klrl").split(".") if p]
        found = []
        for alias in node.names:  # `from . import x` may name a module
            candidate = ".".join([*base, alias.name])
            found.append(candidate if candidate in known else ".".join(base))
        return found

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (hidden if in_function else top).update(t for t in targets(child) if t != name)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse(path.read_text()), False)
    return top, hidden


def _floor(name: str) -> int:
    best, floor = -1, None
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".") or prefix == "") and len(prefix) > best:
                best, floor = len(prefix), level
    return floor


def _graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_module_imports_only_its_floor_or_below():
    upward = [
        f"{name} (floor {_floor(name)}) imports {target} (floor {_floor(target)})"
        for name, (top, hidden) in _graph().items()
        for target in top | hidden
        if _floor(target) > _floor(name) and (name, target) not in HIDDEN  # (declared, with its reason)
    ]
    assert not upward, upward


def test_the_import_graph_has_no_cycle():
    graph = {name: {t for t in top if not t.startswith(name + ".") or not name} for name, (top, _) in _graph().items()}
    state, cycles = {}, []

    def visit(name, stack):
        state[name] = "open"
        stack.append(name)
        for target in graph.get(name, ()):
            if target.startswith(name + ".") and name:  # a package importing its own submodules
                continue
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target) :] + [target]))
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [])
    assert not cycles, cycles


def test_imports_inside_functions_say_why():
    hidden = {(name, target) for name, (_, inner) in _graph().items() for target in inner}
    assert hidden <= set(HIDDEN), sorted(hidden - set(HIDDEN))


def test_the_model_file_loader_sits_below_compare():
    top, hidden = _graph()["modelfile"]
    assert not {t for t in top | hidden if t.split(".")[0] in ("compare", "methods", "sweep", "cli")}
