"""The package uses Dagster's public API only: a private module (``dagster._core...``, or any
``dagster_*._...`` package's) can change in any release without notice, so an upgrade could break
us silently. Each exception is listed here with why no public name exists; lib/ has none."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "flywheel_pipelines"

# path (relative to the package) -> the private modules it may import, and why.
ALLOWED = {
    # Dagster exports DefaultRunLauncher (dg.DefaultRunLauncher) but not the result types of
    # check_run_worker_health, which a launcher that implements it must return (dagster 1.13.27).
    "run_launcher.py": {"dagster._core.launcher"},
}


def private_imports(path: Path) -> set[str]:
    """Modules ``path`` imports whose dotted name has a private (``_``-prefixed) part under a
    ``dagster`` package, wherever the import is (module level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0].startswith("dagster") and any(p.startswith("_") for p in parts[1:]):
                found.add(name)
    return found


def test_no_private_dagster_imports_outside_the_allowlist():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        unexpected = {m for m in private_imports(path)
                      if not any(m == a or m.startswith(a + ".") for a in ALLOWED.get(rel, ()))}
        if unexpected:
            offenders[rel] = sorted(unexpected)
    assert offenders == {}, f"private Dagster imports (use a public name, or allowlist with a reason): {offenders}"


def test_lib_has_no_exception_and_the_allowlist_is_not_stale():
    assert not [rel for rel in ALLOWED if rel.startswith("lib/")]
    for rel, modules in ALLOWED.items():
        used = private_imports(PACKAGE / rel)
        assert all(any(m == a or m.startswith(a + ".") for m in used) for a in modules), (
            f"{rel} no longer imports {modules}: remove it from ALLOWED")


def test_the_check_finds_a_private_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import dagster as dg\n"
                      "def f():\n    from dagster._core.remote_origin import InProcessCodeLocationOrigin\n"
                      "from dagster_graphql.schema import create_schema\n"
                      "import dagster_aws._private\n")
    assert private_imports(sample) == {"dagster._core.remote_origin",
                                       "dagster._core.remote_origin.InProcessCodeLocationOrigin",
                                       "dagster_aws._private"}
