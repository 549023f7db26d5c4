"""The code's shape: gptkit's modules import one way (no circles), and imports sit at the top of a
module, except for the heavy optional packages that only some plugins need."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

LAZY_ALLOWED = {"tensorflow", "transformers", "wandb", "huggingface_hub", "crc32c", "google_crc32c", "rouge_score", "sweeps", "yaml",
                "fastapi", "starlette", "uvicorn", "lm_eval"}  # heavy or optional
# Parts of torch that take about a second to import and only distributed training needs.
LAZY_TORCH = ("torch.distributed.run", "torch.distributed.elastic", "torch.distributed.checkpoint", "torch.distributed.fsdp", "torch.nn.parallel", "torch.utils.checkpoint")


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
    """Commands are the exception: they import what they run when they run (gptkit.commands)."""
    tucked = []
    for name, path in modules():
        if name.startswith("gptkit.commands"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(func):
                    for target in imported(node, name)[:1]:
                        if target.split(".")[0] not in LAZY_ALLOWED and not target.startswith(LAZY_TORCH):
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


LIST_MODULES_AT_EXIT = "import atexit, json, sys; atexit.register(lambda: open({out!r}, 'w').write(json.dumps(sorted(sys.modules))))"


def modules_loaded(tmp_path, code: str, argv: list[str] = (), **env: str) -> set[str]:
    """The modules a fresh Python process has loaded when it exits after running `code` (with
    `argv` as sys.argv[1:]): sys.modules, which also holds what importlib loads (entry points)."""
    out = tmp_path / "modules.json"
    script = LIST_MODULES_AT_EXIT.format(out=str(out)) + "\nsys.argv[1:] = " + repr(list(argv)) + "\n" + code
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert out.is_file(), result.stderr[-2000:]
    return set(json.loads(out.read_text())), result


RUN_GPTKIT = "import runpy; runpy.run_module('gptkit', run_name='__main__', alter_sys=True)"


ENGINE = ("gptkit.training", "gptkit.runs", "gptkit.sweep", "gptkit.distributed", "gptkit.recipes", "gptkit_plugins.trackers", "gptkit.checkpoint")


def test_building_a_gpt_loads_no_engine_and_no_plugin_it_does_not_use(tmp_path):
    loaded, _ = modules_loaded(tmp_path, "from gptkit.model import GPT, GPTConfig; GPT(GPTConfig(vocab_size=11, context_length=4, emb_dim=8, n_heads=2, n_layers=1))")
    assert "gptkit.model" in loaded
    assert sorted(m for m in loaded if m.startswith(ENGINE)) == []
    assert sorted(m for m in loaded if m.startswith("gptkit_plugins.")) == ["gptkit_plugins.attention", "gptkit_plugins.feedforward", "gptkit_plugins.norms"]


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["run", "--help"], ["sweep", "--help"]])
def test_version_and_help_load_no_plugin_and_no_torch(tmp_path, argv):
    loaded, result = modules_loaded(tmp_path, RUN_GPTKIT, argv)
    assert "gptkit.cli" in loaded and result.stdout
    assert sorted(m for m in loaded if m.startswith("gptkit_plugins") or m == "torch") == []


def test_completion_of_command_names_loads_no_plugin_and_no_torch(tmp_path):
    loaded, result = modules_loaded(tmp_path, RUN_GPTKIT, _GPTKIT_COMPLETE="bash_complete", COMP_WORDS="gptkit ge", COMP_CWORD="1")
    assert result.stdout.split() == ["plain,generate"]
    assert sorted(m for m in loaded if m.startswith("gptkit_plugins") or m == "torch") == []


def test_no_class_of_the_core_over_250_lines_and_the_engine_loop_on_one_screen():
    long = []
    for name, path in modules():
        if name.startswith("gptkit."):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 250:
                    long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == []
    training = ast.parse((ROOT / "gptkit" / "training.py").read_text(encoding="utf-8"))
    (fit,) = [node for node in training.body if isinstance(node, ast.FunctionDef) and node.name == "fit"]
    assert fit.end_lineno - fit.lineno + 1 <= 70
