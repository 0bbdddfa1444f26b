"""The package layout is the architecture: a lower layer never imports a higher one.

Checked on the source (every `import`, lazy ones inside functions included),
so a violation fails here before it becomes an import cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "adans_toolchain"

# Lowest first. A module may import its own layer and any layer listed before it.
LAYERS = [
    {"errors", "fileio", "__init__"},
    {"runtime", "search"},
    {"frontend", "analysis"},
    {"plan"},
    {"transforms"},
    {"evaluation"},
    {"lowering"},
    {"finetune", "profiling", "quantization"},
    {"reporting"},
    {"pipeline"},
    {"cli"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _layer(module: str) -> str:
    """'adans_toolchain.evaluation.cache' -> 'evaluation'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_module(name: str) -> bool:
    return (PACKAGE / f"{name}.py").exists() or (PACKAGE / name / "__init__.py").exists()


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0 or PACKAGE not in path.parents, f"{path}: relative import; write adans_toolchain.…"
            if node.module == "adans_toolchain":  # `from adans_toolchain import x`: x is a module or an attribute
                found.update(f"adans_toolchain.{a.name}" for a in node.names if _is_module(a.name))
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_top_level_entry_of_the_package_has_a_layer():
    entries = {p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())}
    assert entries <= set(RANK), f"place these in LAYERS: {sorted(entries - set(RANK))}"


def test_no_layer_imports_a_higher_one():
    violations = []
    for path in _sources(PACKAGE):
        own = _layer(".".join(path.relative_to(REPO).with_suffix("").parts))
        for module in _imports(path):
            if module.startswith("adans_toolchain.") and RANK[_layer(module)] > RANK[own]:
                violations.append(f"{path.relative_to(REPO)} ({own}) imports {module}")
    assert not violations, "\n".join(violations)


def test_targets_and_cost_models_never_import_the_toolchain():
    for root in (REPO / "targets", REPO / "cost_models"):
        for path in _sources(root):
            bad = [m for m in _imports(path) if m.split(".")[0] == "adans_toolchain"]
            assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_the_layer_check_catches_an_upward_import(tmp_path):
    # The check itself must be able to fail.
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from adans_toolchain.pipeline.compile import compile_model\n")
    assert "adans_toolchain.pipeline.compile" in _imports(source)
    assert RANK[_layer("adans_toolchain.pipeline.compile")] > RANK[_layer("adans_toolchain.search.loop")]
