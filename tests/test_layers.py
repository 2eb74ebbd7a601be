"""The package's layers stay one-way (docs/architecture.md): each package imports only the packages below it,
only the jobs and the tracking module import MLflow, and no job imports another job.

Read from the source (every ``import`` statement, top-level or inside a function), so a lazy import cannot hide a
dependency."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medcf"
#: bottom to top: a package may import itself and the packages before it
LAYERS = ["runtime", "core", "radiograph", "prepare", "outputs", "training", "phantoms", "measure", "jobs"]
JOBS = {"prepare", "inference", "calibrate", "evaluate", "audit", "study"}
MLFLOW_ALLOWED = ("medcf.jobs.", "medcf.runtime.tracking")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in the file names (``from a import b``: ``a`` and
    ``a.b``, since b may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


MODULES = _modules()


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "medcf" and parts[1] in LAYERS else None


def test_every_module_lives_in_a_layer():
    loose = [m for m in MODULES if m != "medcf" and _layer(m) is None]
    assert loose == [], f"modules outside the layer packages: {loose}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m)))
def test_a_module_imports_only_its_own_layer_and_those_below(module):
    rank = LAYERS.index(_layer(module))
    above = sorted(name for name in _imports(MODULES[module]) if _layer(name) and LAYERS.index(_layer(name)) > rank)
    assert above == [], f"{module} ({LAYERS[rank]}) imports {above}, from layers above it"


def test_only_the_jobs_and_the_tracking_module_import_mlflow():
    importers = sorted(
        module
        for module, path in MODULES.items()
        if any(name == "mlflow" or name.startswith("mlflow.") for name in _imports(path))
        and not module.startswith(MLFLOW_ALLOWED)
    )
    assert importers == []


def test_no_job_imports_another_job():
    crossing = {}
    for job in JOBS:
        others = {f"medcf.jobs.{other}" for other in JOBS - {job}}
        named = _imports(MODULES[f"medcf.jobs.{job}"]) & others
        if named:
            crossing[job] = sorted(named)
    assert crossing == {}


def test_the_core_never_imports_the_tracking_module():
    users = sorted(m for m in MODULES if _layer(m) == "core" and "medcf.runtime.tracking" in _imports(MODULES[m]))
    assert users == []


def test_the_rules_catch_an_import_from_above(tmp_path):
    """The checks above would fail on a core module that imports a job."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from medcf.jobs.inference import InferenceRun\n")
    assert "medcf.jobs.inference" in _imports(probe) and _layer("medcf.jobs.inference") == "jobs"
