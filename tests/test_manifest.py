"""The manifest is validated on load, and every error names the file, the exercise, the case and the key."""

from __future__ import annotations

import pytest
import yaml

from grader import manifest
from grader.manifest import ManifestError

BASE = {
    "version": 1,
    "exercises": [{
        "id": "ex1", "title": "Sequence sharding", "file": "ex1_sequence_shard.py",
        "functions": ["shard_positions"],
        "cases": [{"name": "positions", "check": "positions", "world_size": 4, "shape": {"S": 8}}],
    }],
}


def load(tmp_path, data):
    path = tmp_path / "lab_manifest.yaml"
    path.write_text(yaml.safe_dump(data))
    return manifest.load(path)


def with_case(**changes):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["exercises"][0]["cases"][0].update(changes)
    return data


def test_the_kit_manifest_loads_and_ids_are_readable():
    lab = manifest.load()
    assert lab.cases, "the kit's manifest has cases"
    case = next(c for c in lab.cases if c.exercise == "ex1" and c.name == "gather_zigzag")
    assert case.id == "ex1-gather_zigzag-P4"
    assert case.title == "ex1 - gather_zigzag P=4"
    assert all(c.title.startswith(c.exercise + " ") for c in lab.cases)
    assert any(c.hidden for c in lab.cases) and any(not c.hidden for c in lab.cases)


@pytest.mark.parametrize("changes, message", [
    ({"wold_size": 4}, "ex1 case 'positions': unknown key 'wold_size'"),
    ({"scheme": "diagonal"}, "ex1 case 'positions': 'scheme' must be one of contiguous, zigzag, striped"),
    ({"world_size": 0}, "'world_size' must be an integer from 1 to 64"),
    ({"check": "posit"}, "ex1 case 'positions': unknown check 'posit'"),
    ({"visibility": "secret"}, "'visibility' must be one of public, hidden"),
    ({"group": [0, 9]}, "'group' must be a list of distinct ranks below world_size 4"),
    ({"timeout": -1}, "'timeout' must be a number >= 0"),
])
def test_case_errors_name_the_case_and_key(tmp_path, changes, message):
    with pytest.raises(ManifestError, match="lab_manifest.yaml: ") as err:
        load(tmp_path, with_case(**changes))
    assert message in str(err.value)


def test_missing_key_and_duplicate_id(tmp_path):
    data = with_case()
    del data["exercises"][0]["cases"][0]["check"]
    with pytest.raises(ManifestError, match="case 'positions': missing key 'check'"):
        load(tmp_path, data)
    data = with_case()
    data["exercises"][0]["cases"].append(dict(data["exercises"][0]["cases"][0]))
    with pytest.raises(ManifestError, match="the id ex1-positions-P4 appears twice"):
        load(tmp_path, data)


def test_defaults_apply_and_select_filters(tmp_path):
    data = with_case()
    data["defaults"] = {"timeout": 7, "scheme": "striped"}
    data["exercises"][0]["cases"].append({"name": "hidden_one", "check": "positions", "world_size": 2,
                                          "visibility": "hidden"})
    lab = load(tmp_path, data)
    assert {c.timeout for c in lab.cases} == {7}
    assert {c.scheme for c in lab.cases} == {"striped"}
    assert [c.name for c in lab.select(hidden=False)] == ["positions"]
    with pytest.raises(ManifestError, match="unknown exercise ex9"):
        lab.select(["ex9"])
