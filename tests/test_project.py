"""The set-up promises of the README: environment.yml, pyproject ranges, pins and CI agree."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _pins():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version.strip()
    return pins


def test_environment_yml_installs_the_pinned_torch_and_the_package():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict))
    pins = _pins()
    assert f"torch=={pins['torch']}" in pip_section and f"torchvision=={pins['torchvision']}" in pip_section
    assert "-e .[data,metrics,notebooks,dev]" in pip_section


def test_pyproject_ranges_admit_the_pinned_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins()
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    for line in reqs:
        req = Requirement(line)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} outside {req.specifier}"


def test_ci_runs_the_readme_test_command_and_installs_chromium():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^make test$", ci, re.M)
    assert command, "CI must run `make test`"
    # for the browser test in tests/study/test_notebooks.py
    assert "apt-get install -y -qq chromium chromium-driver" in ci
    # the test command the README gives is the one CI runs, and make runs pytest over tests/
    assert re.search(r"^make test\s+#", readme, re.M)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: setup\n\t\$\(PY\) -m pytest", makefile, re.M)
    assert re.search(r"^reproduce: setup\n\t\$\(PY\) -m patchlab reproduce --profile default$", makefile, re.M)
    assert re.search(r"^reports: setup\n\t\$\(PY\) -m patchlab reproduce --profile default --publish$", makefile, re.M)


def test_makefile_installs_with_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in makefile and "pytest" in makefile


def _imports(path: Path) -> set[str]:
    """The patchlab modules a file imports (relative imports resolved; also inside functions and under
    ``if TYPE_CHECKING:``: a layer names only the layers below it, even for annotations)."""
    import ast

    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            out |= {name} | {f"{name}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {n for n in out if n.startswith("patchlab")}


def test_imports_run_one_way_core_then_memory_and_metrics_then_study():
    layer = {"memory": 1, "metrics": 1, "study": 2}
    for path in (ROOT / "patchlab").rglob("*.py"):
        parts = path.relative_to(ROOT / "patchlab").parts
        mine = layer.get(parts[0], 0) if len(parts) > 1 else 0
        if path.name in ("cli.py", "__init__.py") and len(parts) == 1:
            continue  # the CLI registers every command; the package exposes its parts
        for name in _imports(path):
            sub = name.split(".")[1] if name.count(".") else ""
            theirs = layer.get(sub, 0)
            assert theirs <= mine and not (theirs == mine == 1 and sub != parts[0]), f"{path} imports {name}"


def test_no_module_imports_itself_through_others():
    """Import cycles, counting imports inside functions: each module sits on the ones it imports."""
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in (ROOT / "patchlab").rglob("*.py")
             if p.name != "__init__.py" and not (p.name == "cli.py" and p.parent.name == "patchlab")}
    graph = {m: {n for n in _imports(p) if n in files and n != m} for m, p in files.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module, path):
        state[module] = 1
        for other in sorted(graph[module]):
            assert state.get(other) != 1, " -> ".join(path[path.index(other):] + [other]) if other in path else other
            if other not in state:
                visit(other, path + [other])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


@pytest.mark.slow
def test_the_cli_loads_no_optional_extra():
    import subprocess
    import sys

    code = ("import sys, patchlab, patchlab.cli; patchlab.cli.build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'pandas', 'matplotlib', 'papermill', 'ipywidgets', 'IPython', 'seaborn', 'nbformat'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
