"""The package uses Dagster's public API only: a private module (``dagster._core...``, or any
``dagster_*._...`` package's) can change in any release without notice, so an upgrade could break
us silently. Each exception is listed here with why no public name exists; lib/ has none. Nor
does any module call a deprecated, beta or preview API when it is imported."""

import ast
import subprocess
import sys
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


# Imports every module of the package in a fresh interpreter with the deprecation, beta and preview
# warnings attributed to our code as errors. Needed besides pytest's filterwarnings: Dagster switches
# its own warnings off while load_from_defs_folder imports defs/, so a deprecated call at module
# level (a job definition, say) would never reach a test; and a module another test imported
# first would not warn again.
IMPORT_ALL = """
import importlib, pkgutil, warnings
import dagster, flywheel_pipelines
for category in (DeprecationWarning, PendingDeprecationWarning, dagster.SupersessionWarning,
                 dagster.BetaWarning, dagster.PreviewWarning):
    warnings.filterwarnings("error", category=category, module="flywheel_pipelines")
for module in pkgutil.walk_packages(flywheel_pipelines.__path__, "flywheel_pipelines."):
    try:
        importlib.import_module(module.name)
    except Warning as exc:
        print(f"{module.name}: {type(exc).__name__}: {exc}")
"""


def test_no_module_calls_a_deprecated_beta_or_preview_api_when_imported():
    out = subprocess.run([sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.strip() == ""
