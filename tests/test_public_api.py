"""Built-in plugins use only the public API (``mmnsim`` and ``mmnsim.pagebits``), as the README promises:
what one needs is exported from ``mmnsim``, so that a plugin author can copy any of them as a start."""

import ast
from pathlib import Path

import pytest

import mmnsim

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = {"mmnsim", "mmnsim.pagebits"}
PLUGINS = sorted((ROOT / "plugins").glob("*.py")) + sorted((ROOT / "examples").glob("*/*/*.py"))


def mmnsim_imports(path: Path) -> list[tuple[str, int]]:
    """Every module of mmnsim the file imports, with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mmnsim":
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "mmnsim"]
    return found


@pytest.mark.parametrize("path", PLUGINS, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_built_in_plugin_imports_only_the_public_api(path):
    private = [f"{path.name}:{line}: {module}" for module, line in mmnsim_imports(path) if module not in PUBLIC]
    assert not private, f"imports outside {sorted(PUBLIC)} (export what it needs from mmnsim): {private}"


def test_every_export_exists():
    missing = [name for name in mmnsim.__all__ if not hasattr(mmnsim, name)]
    assert not missing, missing


def test_the_check_sees_a_private_import(tmp_path):
    plugin = tmp_path / "p.py"
    plugin.write_text("from mmnsim import hookimpl\nfrom mmnsim.thp import split\nimport mmnsim.kernel\n")
    assert [m for m, _ in mmnsim_imports(plugin) if m not in PUBLIC] == ["mmnsim.thp", "mmnsim.kernel"]
