"""The shape of the code: gpubp's own import graph is acyclic, nothing of gpubp is imported inside a
function, no module needs the package root, and no function is too long to read at once.

Parsed with ``ast`` from the source files, so it checks what the code says, not what happened to be
imported first.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gpubp

PACKAGE = Path(gpubp.__file__).resolve().parent
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(importer: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The gpubp modules an import statement loads (a name that is a submodule counts as that module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "gpubp"]
    if node.level:
        package = importer if MODULES[importer].name == "__init__.py" else importer.rsplit(".", 1)[0]
        base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        target = f"{base}.{node.module}" if node.module else base
    elif node.module and node.module.split(".")[0] == "gpubp":
        target = node.module
    else:
        return []
    found = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in MODULES]
    return found if len(found) == len(node.names) else [*found, target]


def _imports(name: str) -> tuple[set[str], list[str]]:
    """(gpubp modules ``name`` imports, descriptions of imports of gpubp inside functions)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    edges: set[str] = set()
    inside: list[str] = []
    for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        for node in ast.walk(function):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and _resolve(name, node):
                inside.append(f"{name}.{function.name} (line {node.lineno}) imports {_resolve(name, node)}")
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            edges.update(target for target in _resolve(name, node) if target != name)
    return edges, inside


GRAPH = {name: _imports(name)[0] for name in MODULES}


def test_the_graph_was_parsed():
    assert {"gpubp.mlp", "gpubp.training", "gpubp.backends.base", "gpubp.benchmark.timing"} <= set(MODULES)
    assert "gpubp.training" in GRAPH["gpubp.mlp"] and "gpubp.checkpoint" in GRAPH["gpubp.training"]
    assert "gpubp.backends.spec" in GRAPH["gpubp.backends.base"]


def test_no_import_of_gpubp_inside_a_function():
    inside = [line for name in MODULES for line in _imports(name)[1]]
    assert not inside, "\n".join(inside)


def test_no_module_imports_the_package_root():
    offenders = [name for name, targets in GRAPH.items() if "gpubp" in targets and name != "gpubp"]
    assert not offenders


def test_the_import_graph_is_acyclic():
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(GRAPH.get(node, ())):
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target] if target in path else [node, target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


def test_the_checker_finds_a_cycle_and_an_import_in_a_function(tmp_path, monkeypatch):
    """The checks above can fail: a made-up pair of modules that import each other, one inside a function."""
    monkeypatch.setitem(MODULES, "gpubp.fake_a", tmp_path / "fake_a.py")
    monkeypatch.setitem(MODULES, "gpubp.fake_b", tmp_path / "fake_b.py")
    (tmp_path / "fake_a.py").write_text("from . import fake_b\n")
    (tmp_path / "fake_b.py").write_text("def f():\n    from .fake_a import thing\n")
    assert _imports("gpubp.fake_a")[0] == {"gpubp.fake_b"}
    edges, inside = _imports("gpubp.fake_b")
    assert edges == {"gpubp.fake_a"} and len(inside) == 1
    monkeypatch.setitem(GRAPH, "gpubp.fake_a", {"gpubp.fake_b"})
    monkeypatch.setitem(GRAPH, "gpubp.fake_b", {"gpubp.fake_a"})
    with pytest.raises(pytest.fail.Exception, match="import cycle: gpubp.fake_a -> gpubp.fake_b -> gpubp.fake_a"):
        test_the_import_graph_is_acyclic()


def test_no_function_is_longer_than_a_screen():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long


def test_skips_are_summarised_by_reason(tmp_path):
    """``pytest -q`` groups skips by reason, one line each; ``-rs`` lists them test by test."""
    import subprocess
    import sys

    (tmp_path / "test_some_skips.py").write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('k', range(5))\n"
        "def test_gpu(k):\n    pytest.skip('no usable CUDA device: stand-in')\n"
        "def test_other():\n    pytest.skip('another reason')\n")
    conftest = Path(__file__).with_name("conftest.py").read_text(encoding="utf-8")
    (tmp_path / "conftest.py").write_text(conftest)
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEX", str(tmp_path)]
    summary = subprocess.run(base, capture_output=True, text=True, cwd=tmp_path).stdout
    assert "    5 no usable CUDA device: stand-in" in summary and "    1 another reason" in summary
    assert "SKIPPED [" not in summary
    listed = subprocess.run([*base, "-rs"], capture_output=True, text=True, cwd=tmp_path).stdout
    assert "SKIPPED [5]" in listed and "skipped, by reason" not in listed


def test_gpu_tests_fail_instead_of_skipping_when_a_gpu_is_required():
    import os
    import subprocess
    import sys

    if gpubp.cupy_status()[0]:
        pytest.skip("this machine has a usable GPU: the GPU tests run")
    tests = Path(__file__).parent
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
                             str(tests / "test_gpu.py"), "-k", "never_synchronises"], capture_output=True, text=True,
                            cwd=tests.parent, env={**os.environ, "GPUBP_REQUIRE_GPU": "1"})
    assert result.returncode == 1 and "GPUBP_REQUIRE_GPU=1 but there is no usable CUDA device" in result.stdout
