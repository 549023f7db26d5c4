"""The code's shape: gptkit's modules import one way (no circles), and imports sit at the top of a
module, except for the heavy optional packages that only some plugins need."""

import ast
from pathlib import Path

from conftest import ROOT

LAZY_ALLOWED = {"tensorflow", "transformers", "wandb", "huggingface_hub", "crc32c", "google_crc32c", "rouge_score", "sweeps", "yaml",
                "fastapi", "starlette", "uvicorn", "lm_eval"}  # heavy or optional
# gptkit modules that import an optional extra at their top, so that the CLI imports them only when needed.
LAZY_MODULES = {"gptkit.harness": "imports lm_eval (the eval extra): its model adapter subclasses lm-eval's TemplateLM"}


def modules():
    for folder, package in ((ROOT / "gptkit", "gptkit"), (ROOT / "plugins", "gptkit_plugins")):
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join([package, *parts]), path


def imported(node: ast.AST, here: str, known=()) -> list[str]:
    """The modules an import statement loads: `from gptkit import plugins` loads gptkit.plugins
    (a submodule), `from gptkit import hookimpl` loads the package gptkit."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            base = ".".join(here.split(".")[: -node.level] + ([base] if base else []))
        submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
        return submodules if len(submodules) == len(node.names) else [base, *submodules]
    return []


def test_no_import_inside_functions_but_heavy_optional_packages():
    tucked = []
    for name, path in modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(func):
                    for target in imported(node, name)[:1]:
                        if target.split(".")[0] not in LAZY_ALLOWED and target not in LAZY_MODULES:
                            tucked.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {target}")
    assert tucked == []


def test_gptkit_modules_import_one_way():
    known = dict(modules())
    graph = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets = set()
        for node in tree.body:  # top-level imports (functions hold none, see above)
            if isinstance(node, ast.If):  # `if TYPE_CHECKING:` / version switches: not a runtime import of gptkit
                continue
            for target in imported(node, name, known):
                if target in known and target != name:
                    targets.add(target)
        graph[name] = targets
    cycles = []
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []
    assert "gptkit_plugins" not in " ".join(t for name, ts in graph.items() if name.startswith("gptkit.") for t in ts), "the core names no plugin"
