"""The install: students get no instructor tool, instructor commands say which extra they need, CI installs it."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

from conftest import KIT

INSTRUCTOR_ONLY = ("nbgrader", "jupyterlab", "notebook", "rich", "matplotlib")
# Runs `python -m grader ARGS` with the instructor extra's modules made unimportable, as on a student's install.
WITHOUT_EXTRA = """\
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Missing())
from grader.cli import main
sys.exit(main({argv!r}))
"""


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0].lower()


def test_the_student_install_pulls_no_instructor_tool():
    project = tomllib.loads((KIT / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    assert not core & set(INSTRUCTOR_ONLY), core & set(INSTRUCTOR_ONLY)
    extra = {_name(r) for r in project["optional-dependencies"]["instructor"]}
    assert {"nbgrader", "rich", "matplotlib"} <= extra


def _without_extra(*argv: str, blocked=("nbgrader", "nbformat", "rich", "matplotlib")):
    code = WITHOUT_EXTRA.format(blocked=set(blocked), argv=list(argv))
    return subprocess.run([sys.executable, "-c", code], cwd=KIT, capture_output=True, text=True, timeout=120)


def test_instructor_commands_name_the_extra_they_need(tmp_path):
    for argv in (("nbgrader", str(tmp_path / "course"), "--assignment", "x"),
                 ("batch", str(tmp_path), "--out", str(tmp_path / "g.csv"))):
        done = _without_extra(*argv)
        assert done.returncode == 2, (argv, done.stdout, done.stderr)
        assert 'pip install -e ".[instructor]"' in done.stderr and "is not installed" in done.stderr, done.stderr
    assert not (tmp_path / "course").exists()
    # batch needs matplotlib only at the end: it says so before it grades anything
    done = _without_extra("batch", str(tmp_path), "--out", str(tmp_path / "g.csv"), blocked=("matplotlib",))
    assert done.returncode == 2 and "matplotlib is not installed" in done.stderr, done.stderr


def test_the_students_commands_work_without_the_extra():
    done = _without_extra("check", "--help")
    assert done.returncode == 0 and "usage" in done.stdout, done.stderr


def test_ci_installs_what_the_whole_suite_needs_and_the_readme_says_so():
    ci = (KIT / ".ci" / "run").read_text()
    assert re.search(r'pip install -q -e "\.\[instructor\]"', ci), ci
    assert "torch==2.13.0" in ci
    readme = (KIT / "README.md").read_text()
    cpu = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
    install, test = readme.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert cpu in install and install.endswith('pip install -e ".[instructor]"') and test.startswith("python -m pytest")
    assert test.split("#")[0].strip() in ci.splitlines(), "CI does not run the README's test command"
    student = next(block for block in readme.split("```bash\n")[2:] if "pip install" in block.split("```")[0])
    assert cpu in student and student.split("```")[0].strip().endswith("pip install -e .")
