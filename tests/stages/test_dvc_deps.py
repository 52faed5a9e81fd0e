"""Every project module a stage runs is a dependency of that stage in dvc.yaml.

DVC reruns a stage only when a listed dependency changes, so a module the stage imports
but does not list can change results without anything rerunning. The imports are found
statically (``ast``) from the stage script, transitively through stages/ and
src/maskface/, including imports inside functions (the lazy ones run too) and modules
named in strings as ``"maskface.module:function"`` (loaded with importlib, e.g. weight
builders).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "maskface"
STAGES = ROOT / "stages"
_MODULE_STRING = re.compile(r"^(maskface(?:\.\w+)+)(?::\w+)?$")


def _module_file(name: str) -> Path | None:
    """The project file for a dotted module name, or None for anything outside the project."""
    parts = name.split(".")
    if parts[0] == "maskface":
        base = PACKAGE.joinpath(*parts[1:])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None
    candidate = STAGES / f"{name}.py"  # stage scripts import their siblings (_common) by name
    return candidate if len(parts) == 1 and candidate.is_file() else None


def _is_lazy_package_getattr(tree: ast.Module, node: ast.AST, path: Path) -> bool:
    # maskface/__init__.py imports maskface.api inside a module-level __getattr__, which runs
    # only when a caller asks for maskface.load_model & co; such a caller imports it itself.
    if path.name != "__init__.py":
        return False
    for function in tree.body:
        if isinstance(function, ast.FunctionDef) and function.name == "__getattr__":
            if any(inner is node for inner in ast.walk(function)):
                return True
    return False


def _direct_imports(path: Path) -> set[Path]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[Path] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from maskface import tables` imports the submodule; `from maskface.x import f` the module.
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (match := _MODULE_STRING.match(node.value)):
            names = [match.group(1)]
        if not names or _is_lazy_package_getattr(tree, node, path):
            continue
        for name in names:
            parts = name.split(".")
            # Importing maskface.a.b runs maskface/__init__.py and maskface/a first.
            for end in range(1, len(parts) + 1):
                module = _module_file(".".join(parts[:end]))
                if module is not None:
                    found.add(module)
    return found


def imported_files(script: Path) -> dict[Path, list[Path]]:
    """Every project file ``script`` runs -> the import chain that reaches it."""
    chains: dict[Path, list[Path]] = {script: [script]}
    queue = [script]
    while queue:
        current = queue.pop()
        for module in sorted(_direct_imports(current)):
            if module not in chains:
                chains[module] = [*chains[current], module]
                queue.append(module)
    return chains


def _stages() -> dict[str, dict]:
    """Stage name -> its definition; a ``foreach`` stage counts once (its ``do`` block)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def _covered(relative: str, deps: list[str]) -> bool:
    return any(relative == dep.rstrip("/") or relative.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_stage_lists_every_module_it_imports(stage: str):
    definition = _stages()[stage]
    scripts = re.findall(r"\bstages/\w+\.py\b", definition["cmd"])
    assert scripts, f"stage {stage!r}: no stages/<name>.py in its cmd {definition['cmd']!r}"
    deps = [str(dep) for dep in definition.get("deps", [])]
    missing = []
    for script in scripts:
        for module, chain in sorted(imported_files(ROOT / script).items()):
            relative = module.relative_to(ROOT).as_posix()
            if not _covered(relative, deps):
                via = " -> ".join(p.relative_to(ROOT).as_posix() for p in chain)
                missing.append(f"  - {relative}    (imported via {via})")
    assert not missing, (
        f"dvc.yaml stage {stage!r} runs project files it does not list; add these lines to "
        f"stages.{stage}{'.do' if 'do' in yaml.safe_load((ROOT / 'dvc.yaml').read_text())['stages'][stage] else ''}.deps:\n"
        + "\n".join(missing)
    )


def test_the_import_walk_sees_lazy_and_string_imports():
    # Guards the walk itself against independent facts of the code base: train.py imports
    # crop.py at the top, backbones.py imports weights.py inside a function, and weights.py
    # names its OpenCV builder as a "module:function" string.
    chains = imported_files(STAGES / "finetune.py")
    assert PACKAGE / "face" / "crop.py" in chains
    assert PACKAGE / "models" / "weights.py" in chains
    assert PACKAGE / "models" / "facenet_opencv.py" in chains
    assert PACKAGE / "training" / "__init__.py" in chains  # importing maskface.training.train runs it
    assert STAGES / "_common.py" in chains
    assert PACKAGE / "api.py" not in imported_files(STAGES / "split.py")


def test_folder_dependencies_hash_sources_not_bytecode(tmp_path):
    # A stage that depends on src/maskface/<subpackage> would rerun whenever Python rewrote
    # that folder's __pycache__, unless .dvcignore keeps bytecode out of the folder's hash.
    import subprocess
    import sys

    folders = {dep for definition in _stages().values() for dep in definition.get("deps", []) if (ROOT / dep).is_dir()}
    assert folders, "no folder dependency in dvc.yaml: this test guards nothing"
    for folder in sorted(folders):
        probe = f"{folder}/__pycache__/module.cpython-312.pyc"
        done = subprocess.run(
            [sys.executable, "-m", "dvc", "check-ignore", probe], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{probe} is not ignored by .dvcignore: {done.stdout}{done.stderr}"
