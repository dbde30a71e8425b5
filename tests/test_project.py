"""The set-up promises of the README: environment.yml, pyproject ranges, pins and CI agree."""

import re
import tomllib
from pathlib import Path

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
    assert "apt-get install -y -qq chromium chromium-driver" in ci  # for tests/test_browser.py
    quick_start = readme.split("## ")[1]
    assert "make test" in quick_start and "make reproduce" in quick_start
    assert quick_start.index("make reproduce") < quick_start.index("make test")  # the main command comes first
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^reproduce: setup\n\t\$\(PY\) -m patchlab reproduce --profile default$", makefile, re.M)


def test_makefile_installs_with_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in makefile and "pytest" in makefile
