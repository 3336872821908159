"""The install files agree with the README and CI: `.ci/run` runs the README's test command exactly, the main job
installs `requirements.txt` alone, the suite `requirements-test.txt`, and nothing outside the tests imports a
test-only package at module level (the main job runs without them)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_ONLY = ("pytest", "pytest-xdist", "playwright", "mlflow", "wandb")  # requirements-test.txt, not requirements.txt
IMPORT_NAMES = {"pytest": "pytest", "pytest-xdist": "xdist", "playwright": "playwright", "mlflow": "mlflow",
                "wandb": "wandb"}


def requirement_names(path: Path) -> list[str]:
    """Package names of a requirements file, lower case (``-r`` lines and comments left out)."""
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower() for line in lines if line and line[0] != "-"]


def readme_commands() -> list[str]:
    """The bash code blocks of the README's "Two commands" section, in order."""
    section = ROOT.joinpath("README.md").read_text().split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_ci_runs_the_readme_test_command_and_each_command_installs_its_file() -> None:
    main_job, tests = readme_commands()
    ci_lines = [line for line in ROOT.joinpath(".ci/run").read_text().splitlines()
                if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci_lines == [tests]
    assert "-r requirements.txt " in main_job and "requirements-test.txt" not in main_job
    assert "python integrated_experiment.py" in main_job
    assert "-r requirements-test.txt " in tests and "bash scripts/install_test_browser.sh" in tests


def test_requirements_split_main_job_from_test_suite() -> None:
    main = requirement_names(ROOT / "requirements.txt")
    test_text = ROOT.joinpath("requirements-test.txt").read_text()
    assert "-r requirements.txt" in test_text.splitlines()
    assert set(TEST_ONLY) <= set(requirement_names(ROOT / "requirements-test.txt"))
    assert not set(TEST_ONLY) & set(main), "test-only packages belong in requirements-test.txt"
    assert {"torch", "monai", "tensorboard"} <= set(main)  # TensorBoard: the default tracker
    assert "==" not in ROOT.joinpath("requirements.txt").read_text(), "requirements.txt gives lower bounds only"


def test_test_only_packages_are_imported_lazily_outside_the_tests() -> None:
    modules = set(IMPORT_NAMES.values())
    eager = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in ("tests", ".git") or any(part.startswith(".") for part in relative.parts):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        in_function = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for node in ast.walk(fn)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            if any(name.split(".")[0] in modules for name in names) and id(node) not in in_function:
                eager.append(f"{relative}:{node.lineno}")
    assert not eager, f"module-level imports of test-only packages (import them inside the function): {eager}"
