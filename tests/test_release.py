"""`python -m grader release`: a bundle with no solution and no hidden case that installs and self-checks."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from conftest import KIT, ex1_manifest
from grader import manifest as manifest_mod
from grader import release
from grader.cli import main

MANIFEST = ex1_manifest("""\
- {name: positions_contiguous, check: positions, world_size: 4, shape: {S: 16}}
- {name: shard_zigzag, check: shard, world_size: 4, scheme: zigzag, shape: {B: 3, S: 16, F: 5}, points: 2}
- {name: secret_unshard_p3, check: unshard, world_size: 3, scheme: striped, shape: {B: 2, S: 12, F: 4},
   visibility: hidden, seed: 4242, points: 7}
""", extra='    hints: {mismatch: Compare with the table in the module docstring.}\n')
STEP_LIMIT = 240  # seconds for one install or self-check on a loaded 2-core machine


def hidden_names(manifest_path: Path) -> set[str]:
    raw = yaml.safe_load(manifest_path.read_text())
    cases = [c for ex in raw["exercises"] for c in ex.get("cases") or []]
    return {c["name"] for c in cases if c.get("visibility") == "hidden"} - {
        c["name"] for c in cases if c.get("visibility") != "hidden"}


def solution_lines() -> set[str]:
    """Code inside the solution blocks of solutions/, less lines the kit ships anyway (grader/, exercises/)."""
    inside: set[str] = set()
    for path in (KIT / "solutions").glob("*.py"):
        block = re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", path.read_text(), re.S)
        inside.update(line.strip() for b in block for line in b.splitlines())
    public = {line.strip() for folder in ("grader", "exercises") for p in (KIT / folder).rglob("*.py")
              for line in p.read_text().splitlines()}
    return {line for line in inside - public if len(line) >= 20}


def leaks(bundle: Path, names: set[str]) -> list[str]:
    """Every file of `bundle` holding a hidden case's name or a line of a solution block."""
    secret = solution_lines()
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(names))) + r")\b")
    found = []
    for path in (p for p in bundle.rglob("*") if p.is_file()):
        text = path.read_bytes().decode("utf-8", "replace")
        if pattern.search(text) or any(line.strip() in secret for line in text.splitlines()):
            found.append(str(path.relative_to(bundle)))
    return found


def test_release_of_the_kit_holds_no_solution_and_no_hidden_case(tmp_path):
    kit_manifest = manifest_mod.load()
    bundle = release.build(tmp_path / "bundle", kit_manifest)
    names = hidden_names(kit_manifest.path)
    assert names and solution_lines(), "nothing to look for: the scan below would prove nothing"
    assert leaks(bundle, names) == []
    assert sorted(p.name for p in bundle.iterdir()) == sorted(
        [".gitignore", "README.md", "exercises", "grader", "lab_manifest.yaml", "pyproject.toml"])
    assert not list(bundle.rglob("__pycache__"))
    shipped = manifest_mod.load(bundle / "lab_manifest.yaml")
    assert [c.to_dict() for c in shipped.cases] == [c.to_dict() for c in kit_manifest.select(hidden=False)]
    assert "hidden" not in (bundle / "lab_manifest.yaml").read_text()
    # the scan itself finds what it looks for
    planted = tmp_path / "planted"
    shutil.copytree(bundle, planted)
    shutil.copy(KIT / "solutions" / "ex1_sequence_shard.py", planted / "grader" / "notes.py")
    (planted / "README.md").write_text(f"see {sorted(names)[0]}\n")
    assert sorted(leaks(planted, names)) == ["README.md", "grader/notes.py"]


def test_the_whole_release_folder_handed_in_is_found(tmp_path):
    """The README tells students they may hand in the whole folder: zipped, it lands one folder down."""
    from grader import grading

    kit_manifest = manifest_mod.load()
    bundle = release.build(tmp_path / "submission" / "cplab-release", kit_manifest)
    assert "this whole folder (zipped, too)" in (bundle / "README.md").read_text()
    assert grading.locate(tmp_path / "submission", kit_manifest) == (bundle / "exercises").resolve()
    assert grading.found(bundle / "exercises", kit_manifest) == [ex.file for ex in kit_manifest.exercises]


def test_release_refuses_a_bundle_that_would_name_a_hidden_case(tmp_path, capsys):
    leaky = MANIFEST.replace("Compare with the table", "Like secret_unshard_p3 - compare with the table")
    (tmp_path / "manifest.yaml").write_text(leaky)
    assert main(["release", str(tmp_path / "bundle"), "--manifest", str(tmp_path / "manifest.yaml")]) == 2
    err = capsys.readouterr().err
    assert "lab_manifest.yaml:" in err and "names the hidden case 'secret_unshard_p3'" in err
    assert not (tmp_path / "bundle").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.yaml"]  # no staging folder left either


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(bundle, its python): the release of MANIFEST, pip-installed in a fresh venv that sees this torch."""
    root = tmp_path_factory.mktemp("release")
    (root / "manifest.yaml").write_text(MANIFEST)
    assert main(["release", str(root / "bundle"), "--manifest", str(root / "manifest.yaml")]) == 0
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=60)
    python = root / "venv" / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    # torch, pip and setuptools come from this venv; a .pth names a folder, so its own .pth files (this
    # kit's editable install) are not run there
    Path(site, "kit_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                          "-e", str(root / "bundle")], capture_output=True, text=True, timeout=STEP_LIMIT)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return root / "bundle", python


def check(bundle: Path, python: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "grader", "check"], cwd=bundle, capture_output=True, text=True,
                          timeout=STEP_LIMIT)


def test_installed_bundle_imports_its_own_grader(installed, tmp_path):
    bundle, python = installed
    where = subprocess.run([str(python), "-c", "import grader; print(grader.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert where.stdout.strip() == str(bundle / "grader" / "__init__.py"), where.stderr


def test_stubs_score_nothing_and_say_not_implemented(installed):
    bundle, python = installed
    proc = check(bundle, python)
    assert proc.returncode == 1, proc.stderr
    assert "Checking" in proc.stderr and "on 2 public case(s)" in proc.stderr
    assert proc.stdout.count("[not implemented yet]") == 2
    assert re.search(r"^total\s+0/3$", proc.stdout, re.M), proc.stdout


def test_solutions_get_full_public_marks(installed, tmp_path):
    bundle, python = installed
    solved = tmp_path / "solved"
    shutil.copytree(bundle, solved)
    for ex in manifest_mod.load(bundle / "lab_manifest.yaml").exercises:
        shutil.copy(KIT / "solutions" / ex.file, solved / "exercises" / ex.file)
    proc = check(solved, python)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^total\s+3/3$", proc.stdout, re.M), proc.stdout
    tests = subprocess.run([str(python), "-m", "pytest", "exercises/", "-q", "-p", "no:cacheprovider"], cwd=solved,
                           capture_output=True, text=True, timeout=STEP_LIMIT)
    assert tests.returncode == 0 and "2 passed" in tests.stdout, tests.stdout + tests.stderr
