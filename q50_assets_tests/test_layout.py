"""The lineage's stages depend on storage only through the interfaces in
``q50_assets/lineage/common/ports.py``: no module under ``q50_assets/lineage`` imports storage,
automation, the Definitions, the command line, the database models or the benchmarks. Read from
the source with ``ast`` (imports inside functions and ``TYPE_CHECKING`` blocks count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import q50_assets

PACKAGE = Path(q50_assets.__file__).parent
LINEAGE = PACKAGE / "lineage"

# What the lineage may import from the project itself; anything else of the project is refused.
ALLOWED = ("q50_assets.lineage", "q50_assets.settings")
PROJECT = ("q50_assets", "benchmarks")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return out


def _refused(name: str) -> bool:
    if not name.split(".")[0] in PROJECT:
        return False  # the standard library and third-party packages
    return not any(name == allowed or name.startswith(allowed + ".") for allowed in ALLOWED)


def lineage_import_violations() -> list[str]:
    found = []
    for path in sorted(LINEAGE.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for lineno, name in _imported(tree, module, path.name == "__init__.py"):
            if _refused(name):
                found.append(f"{module} (line {lineno}) imports {name}")
    return found


def test_lineage_imports_only_lineage_settings_and_third_party():
    violations = lineage_import_violations()
    assert not violations, "the lineage must reach storage through lineage/common/ports.py:\n" + "\n".join(violations)


def test_the_rule_sees_a_violation(tmp_path):
    tree = ast.parse("from q50_assets.storage.collector import CollectorReader\n"
                     "def f():\n    import q50_assets.automation.jobs\n    from ...db import q50_models\n")
    names = [name for _, name in _imported(tree, "q50_assets.lineage.backtest.asset", False)]
    assert names == ["q50_assets.storage.collector", "q50_assets.automation.jobs", "q50_assets.db"]
    assert all(_refused(n) for n in names)
    assert not _refused("q50_assets.lineage.common.ports") and not _refused("pandas")
    assert _refused("benchmarks.scale") and _refused("q50_assets.definitions") and _refused("q50_assets.cli")
