"""Every public function, method and class of medcf that takes arguments documents them (``Args:``, or
``Attributes:`` for a dataclass), as MONAI's code does; read from the source, so nothing is imported."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medcf"


def _undocumented(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    found = []
    for node in ast.parse(path.read_text()).body:
        members = [node]
        if isinstance(node, ast.ClassDef):
            members += [n for n in node.body if isinstance(n, ast.FunctionDef)]
        for member in members:
            if not isinstance(member, ast.FunctionDef | ast.ClassDef) or member.name.startswith("_"):
                continue
            if isinstance(member, ast.FunctionDef):
                if any(isinstance(d, ast.Name) and d.id == "property" for d in member.decorator_list):
                    continue
                named = [a for a in member.args.args if a.arg not in ("self", "cls")] + member.args.kwonlyargs
                if not named:
                    continue
            doc = ast.get_docstring(member) or ""
            if "Args:" not in doc and "Attributes:" not in doc:
                found.append(f"{path.relative_to(root)}:{member.lineno} {member.name}")
    return found


def test_every_public_name_that_takes_arguments_documents_them():
    missing = [name for path in sorted(PACKAGE.rglob("*.py")) for name in _undocumented(path)]
    assert missing == []


def test_the_check_finds_an_undocumented_function_and_passes_a_documented_one(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('def shift(x, by=1):\n    """Add."""\n    return x + by\n')
    assert _undocumented(probe, tmp_path) == ["probe.py:1 shift"]
    documented = '    """Add.\n\n    Args:\n        x: a number.\n        by: the step.\n    """\n'
    probe.write_text("def shift(x, by=1):\n" + documented)
    assert _undocumented(probe, tmp_path) == []
