"""monitor/ is laid out as its data flows: the layers import only what lies upstream of them or beside them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MONITOR = ROOT / "monitor"

# What each layer may import of `monitor` (itself always). The commands, the driver and the pipeline at
# the top of monitor/ may import everything.
ALLOWED = {
    "monitor.folders": set(),
    "monitor.ingest": {"monitor.folders"},
    "monitor.aggregates": {"monitor.folders"},
    "monitor.outputs": {"monitor.folders", "monitor.aggregates"},
}
MAX_TOP_MODULES = 10
MAX_MODULE_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path) -> set[str]:
    """Every `monitor...` module the file imports, at any depth (lazy imports in functions count)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n == "monitor" or n.startswith("monitor.")}


def _layer(module: str) -> str | None:
    return next((layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")), None)


def _within(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _modules() -> list[Path]:
    return sorted(MONITOR.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_layer_imports_only_upstream_of_it(path):
    module = _module_name(path)
    layer = _layer(module)
    if layer is None:
        return  # the top: commands, driver, pipeline
    allowed = ALLOWED[layer] | {layer}
    # `from monitor.outputs import render` names the package `monitor.outputs` too: a parent package is fine
    wrong = sorted(n for n in _imported(path)
                   if not _within(n, allowed) and not layer.startswith(n + ".") and n != "monitor")
    assert not wrong, f"{module} ({layer}) imports {wrong}; it may import only {sorted(allowed)}"


def test_the_top_of_monitor_holds_at_most_ten_modules():
    top = sorted(p.name for p in MONITOR.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(top) <= MAX_TOP_MODULES, top


def test_every_package_says_what_it_holds():
    for init in MONITOR.rglob("__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"


def test_no_module_is_longer_than_six_hundred_lines():
    long = {str(p.relative_to(ROOT)): n for p in [*_modules(), *(ROOT / "trainer_side").rglob("*.py")]
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_the_checker_sees_a_wrong_import(tmp_path):
    stray = tmp_path / "stray.py"
    stray.write_text("def f():\n    from monitor.ingest.logbook import LogBook\n")
    assert "monitor.ingest.logbook" in _imported(stray)
