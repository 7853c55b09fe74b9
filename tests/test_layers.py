"""The architecture stays visible: layers import downward only, and `import contd_nb` is cheap."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import contd_nb

PKG = Path(contd_nb.__file__).parent
LEAF_SDK = {"contd_nb.sdk.errors", "contd_nb.sdk.config", "contd_nb.sdk.context"}


def _imports(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved)."""
    module = "contd_nb." + ".".join(path.relative_to(PKG).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    package = package.removesuffix(".__init__")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names)
    return found


def _files(sub: str) -> list[Path]:
    return sorted((PKG / sub).rglob("*.py"))


def test_core_and_persistence_never_import_frontends():
    banned = ("IPython", "ipywidgets", "pandas", "prometheus_client", "matplotlib")
    for sub in ("core", "persistence"):
        for f in _files(sub):
            bad = {m for m in _imports(f) if m.split(".")[0] in banned}
            assert not bad, f"{f.relative_to(PKG)} imports {bad}"


def test_imports_go_downward_only():
    # persistence may use the sdk's leaf modules (errors), never core or the sdk's upper part
    for f in _files("persistence"):
        for m in _imports(f):
            assert not m.startswith("contd_nb.core"), f"{f.name} imports {m}"
            if m.startswith("contd_nb.sdk"):
                assert any(m.startswith(leaf) for leaf in LEAF_SDK), f"{f.name} imports {m}"
    for f in _files("core"):
        for m in _imports(f):
            if m.startswith("contd_nb.sdk"):
                assert any(m.startswith(leaf) for leaf in LEAF_SDK), f"{f.name} imports {m}"
    for leaf in LEAF_SDK:
        f = PKG / (leaf.removeprefix("contd_nb.").replace(".", "/") + ".py")
        inner = {m for m in _imports(f) if m.startswith("contd_nb")}
        assert all(any(m.startswith(ok) for ok in LEAF_SDK) for m in inner), \
            f"leaf {leaf} imports {inner}"


def test_modules_stay_small():
    for f in PKG.rglob("*.py"):
        lines = len(f.read_text().splitlines())
        assert lines <= 600, f"{f.relative_to(PKG)} has {lines} lines"


def test_import_is_cheap():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, contd_nb; print(sorted(m for m in ('duckdb', "
         "'pandas', 'pyarrow', 'numpy', 'IPython', 'cloudpickle') if m in sys.modules))"],
        capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_api_is_one_sorted_all():
    assert contd_nb.__all__ == sorted(contd_nb.__all__)
    for name in contd_nb.__all__:
        assert hasattr(contd_nb, name), name
