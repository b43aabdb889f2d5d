"""The import layering of services/: evaluation is a leaf that no module outside it imports
(`gflow eval` runs it as a child process), and no import of our own modules hides inside a
function (where it would dodge a cycle).

Read from the source with `ast`, so nothing is imported and the check takes milliseconds.
"""

from __future__ import annotations

import ast
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[2] / "services"

FUNCTION_LEVEL_ALLOWED = {"torch", "minio", "urllib3", "viser"}
"""Third-party packages a function may import: heavy or optional ones that only some commands
and backends need (the GPU stack, the S3 client, the 3D viewer)."""


def _modules(services_dir: Path) -> dict[str, ast.Module]:
    """Every module under `services_dir`, keyed by its path from the repository root."""
    root = services_dir.parent
    return {
        path.relative_to(root).as_posix(): ast.parse(path.read_text(), str(path))
        for path in sorted(services_dir.rglob("*.py"))
    }


def _imported_names(node: ast.Import | ast.ImportFrom) -> list[str]:
    """Dotted names an import statement binds: `from a.b import c` gives a.b.c."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = "." * node.level + (node.module or "")
    return [f"{base}.{alias.name}" for alias in node.names]


def evaluation_importers(services_dir: Path) -> list[str]:
    """'path:line name' for every import of services.evaluation outside it."""
    found = []
    for path, tree in _modules(services_dir).items():
        if path.startswith("services/evaluation/"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                found += [
                    f"{path}:{node.lineno} {name}"
                    for name in _imported_names(node)
                    if name == "services.evaluation" or name.startswith("services.evaluation.")
                ]
    return found


def function_level_imports(services_dir: Path) -> list[str]:
    """'path:line name' for every import inside a function body that is not of an allowed
    third-party package."""
    found = []
    for path, tree in _modules(services_dir).items():
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    found += [
                        f"{path}:{node.lineno} {name}"
                        for name in _imported_names(node)
                        if name.split(".")[0] not in FUNCTION_LEVEL_ALLOWED
                    ]
    return sorted(set(found))


def test_no_module_outside_evaluation_imports_it():
    assert evaluation_importers(SERVICES) == []


def test_no_function_level_imports_of_our_modules():
    assert function_level_imports(SERVICES) == []


def test_the_checks_see_what_they_forbid(tmp_path):
    """Both checks report a planted violation, with its place and name."""
    (tmp_path / "services" / "fit").mkdir(parents=True)
    (tmp_path / "services" / "fit" / "engine.py").write_text(
        "import torch\n"
        "from services.evaluation.metrics import psnr\n"
        "def run():\n"
        "    import torch\n"
        "    from services.fit import camera\n"
        "    import services.evaluation\n"
    )
    assert evaluation_importers(tmp_path / "services") == [
        "services/fit/engine.py:2 services.evaluation.metrics.psnr",
        "services/fit/engine.py:6 services.evaluation",
    ]
    assert function_level_imports(tmp_path / "services") == [
        "services/fit/engine.py:5 services.fit.camera",
        "services/fit/engine.py:6 services.evaluation",
    ]
