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
    ({"world_size": 0}, "'world_size' must be an integer from 1 to 16, got 0"),
    ({"check": "posit"}, "ex1 case 'positions': unknown check 'posit'"),
    ({"visibility": "secret"}, "'visibility' must be one of public, hidden"),
    ({"group": [0, 9]}, "'group' must be a list of distinct ranks below world_size 4"),
])
def test_case_errors_name_the_case_and_key(tmp_path, changes, message):
    with pytest.raises(ManifestError, match="lab_manifest.yaml: ") as err:
        load(tmp_path, with_case(**changes))
    assert message in str(err.value)


TIMEOUT_RULE = "'timeout' must be a positive finite number of seconds (at most 600), got "
POINTS_RULE = "'points' must be a positive finite number, got "
INF, NAN = float("inf"), float("nan")


# Values that would charge the kit's mistake to a student (a zero deadline reads "computes or loops", a
# length the scheme cannot split fails the kit's own solution) or break results.json (Infinity is not JSON).
@pytest.mark.parametrize("changes, message", [
    ({"timeout": 0}, TIMEOUT_RULE + "0"),
    ({"timeout": -1}, TIMEOUT_RULE + "-1"),
    ({"timeout": INF}, TIMEOUT_RULE + "inf"),
    ({"timeout": NAN}, TIMEOUT_RULE + "nan"),
    ({"timeout": 601}, TIMEOUT_RULE + "601"),
    ({"timeout": True}, TIMEOUT_RULE + "True"),
    ({"timeout": "30"}, TIMEOUT_RULE + "'30'"),
    ({"points": 0}, POINTS_RULE + "0"),
    ({"points": -1}, POINTS_RULE + "-1"),
    ({"points": INF}, POINTS_RULE + "inf"),
    ({"points": NAN}, POINTS_RULE + "nan"),
    ({"points": True}, POINTS_RULE + "True"),
    ({"world_size": True}, "'world_size' must be an integer from 1 to 16, got True"),
    ({"world_size": 17}, "'world_size' must be an integer from 1 to 16, got 17"),
    ({"world_size": 4.0}, "'world_size' must be an integer from 1 to 16, got 4.0"),
    ({"group": [True, 2]}, "'group' must be a list of distinct ranks below world_size 4, got [True, 2]"),
    ({"group": [1, 2.0]}, "'group' must be a list of distinct ranks below world_size 4, got [1, 2.0]"),
    ({"group": []}, "'group' must be a list of distinct ranks below world_size 4, got []"),
    ({"group": [[1]]}, "'group' must be a list of distinct ranks below world_size 4, got [[1]]"),
    ({"seed": -1}, "'seed' must be an integer from 0 to 4294967295, got -1"),
    ({"seed": True}, "'seed' must be an integer from 0 to 4294967295, got True"),
    ({"seed": 1.5}, "'seed' must be an integer from 0 to 4294967295, got 1.5"),
    ({"seed": 2**64}, f"'seed' must be an integer from 0 to 4294967295, got {2**64}"),
    ({"shape": {"S": 0}}, "'shape.S' must be a positive integer, got 0"),
    ({"shape": {"S": True}}, "'shape.S' must be a positive integer, got True"),
    ({"shape": {"S": 8.0}}, "'shape.S' must be a positive integer, got 8.0"),
    ({"shape": {"S": 8, "B": -2}}, "'shape.B' must be a positive integer, got -2"),
    ({"shape": {"S": 10}}, "'shape.S' must be divisible by P = 4: scheme 'contiguous' gives each of the "
                           "P = 4 ranks an equal share, got 10"),
    ({"scheme": "striped", "shape": {"S": 6}}, "'shape.S' must be divisible by P = 4: scheme 'striped'"),
    ({"scheme": "zigzag", "shape": {"S": 12}}, "'shape.S' must be divisible by 2P = 8: scheme 'zigzag' gives "
                                               "each of the P = 4 ranks two equal chunks, got 12"),
    # P is the group's size when a group is given: 3 ranks of 4
    ({"group": [1, 2, 3], "shape": {"S": 8}}, "divisible by P = 3: scheme 'contiguous' gives each of the "
                                              "P = 3 ranks (the group's size) an equal share, got 8"),
    ({"group": [1, 2, 3], "scheme": "zigzag", "shape": {"S": 9}}, "divisible by 2P = 6: scheme 'zigzag'"),
    ({"bonus": "yes"}, "'bonus' must be true or false, got 'yes'"),
])
def test_values_the_kit_cannot_grade_by_are_refused(tmp_path, changes, message):
    with pytest.raises(ManifestError) as err:
        load(tmp_path, with_case(**changes))
    text = str(err.value)
    assert text.startswith("lab_manifest.yaml: ex1 case 'positions': "), text
    assert message in text


@pytest.mark.parametrize("changes", [
    {"timeout": 600}, {"timeout": 0.5}, {"points": 0.5}, {"seed": 0}, {"world_size": 16, "shape": {"S": 16}},
    {"group": [1, 2, 3], "shape": {"S": 9}}, {"group": [1, 2, 3], "scheme": "zigzag", "shape": {"S": 12}},
    {"scheme": "zigzag", "shape": {"S": 8}}, {"world_size": 3, "scheme": "striped", "shape": {"S": 21}},
])
def test_values_at_the_limits_load(tmp_path, changes):
    [case] = load(tmp_path, with_case(**changes)).cases
    assert all(getattr(case, k) == (tuple(v) if k == "group" else v) for k, v in changes.items())


@pytest.mark.parametrize("key, value, rule", [
    ("timeout", 0, TIMEOUT_RULE + "0"),
    ("points", INF, POINTS_RULE + "inf"),
    ("seed", True, "'seed' must be an integer from 0 to 4294967295, got True"),
])
def test_bad_defaults_are_refused_as_defaults(tmp_path, key, value, rule):
    data = with_case()
    data["defaults"] = {key: value}
    with pytest.raises(ManifestError, match="^lab_manifest.yaml: defaults: ") as err:
        load(tmp_path, data)
    assert rule in str(err.value)


ULYSSES = {"id": "ex4", "title": "Ulysses", "file": "ex4_ulysses_attention.py", "functions": ["seq_to_head"]}


@pytest.mark.parametrize("case, message", [
    ({"check": "forward", "world_size": 4, "shape": {"H": 6, "S": 8}},
     "'shape.H' must be divisible by P = 4: check 'forward' gives every rank H / P whole heads, got 6"),
    ({"check": "seq_to_head", "world_size": 4, "group": [0, 1, 3], "shape": {"H": 4, "S": 9}},
     "'shape.H' must be divisible by P = 3"),
    # heads_error checks the ValueError for H % P != 0: heads that divide would fail a correct solution
    ({"check": "heads_error", "world_size": 2, "shape": {"H": 4, "S": 4}},
     "'shape.H' must not be divisible by P = 2: check 'heads_error' tests the ValueError for H % P != 0, got 4"),
    ({"check": "comm", "world_size": 4, "shape": {"H": 4}}, "'shape' must give S (check 'comm' reads it)"),
])
def test_heads_must_split_as_the_ulysses_checks_split_them(tmp_path, case, message):
    data = {"version": 1, "exercises": [dict(ULYSSES, cases=[dict(case, name="c")])]}
    with pytest.raises(ManifestError) as err:
        load(tmp_path, data)
    assert str(err.value).startswith("lab_manifest.yaml: ex4 case 'c': ") and message in str(err.value)


def test_the_heads_checks_default_h_is_the_checks_own(tmp_path):
    """No H in the shape: the check's default (4 heads) splits over P = 2 and does not over P = 3."""
    ok = {"name": "ok", "check": "forward", "world_size": 2, "shape": {"S": 8}}
    bad = {"name": "bad", "check": "forward", "world_size": 3, "shape": {"S": 9}}
    assert len(load(tmp_path, {"version": 1, "exercises": [dict(ULYSSES, cases=[ok])]}).cases) == 1
    with pytest.raises(ManifestError, match="ex4 case 'bad': 'shape.H' must be divisible by P = 3"):
        load(tmp_path, {"version": 1, "exercises": [dict(ULYSSES, cases=[bad])]})


STEP = {"id": "ex7", "title": "Step", "file": "ex7_cp_train_step.py", "functions": ["cp_train_step"]}


@pytest.mark.parametrize("params, message", [
    ({"attention": "ulysses"}, "'params.model.n_head' must be divisible by P = 3: attention 'ulysses'"),
    ({"attention": "ulysses", "model": {"n_head": 4, "n_embd": 48}}, "'params.model.n_head' must be divisible"),
    ({"model": {"n_heads": 6}}, "'params.model': unknown key 'n_heads'"),
    ({"model": {"n_head": 6, "n_embd": 30}}, "'params.model.n_embd' must be n_head (6) times an even head size"),
    ({"model": {"n_head": True}}, "'params.model.n_head' must be a positive integer, got True"),
])
def test_ex7_model_heads_must_split_for_ulysses(tmp_path, params, message):
    case = {"name": "c", "check": "step", "world_size": 3, "shape": {"B": 1, "S": 12}, "params": params}
    with pytest.raises(ManifestError) as err:
        load(tmp_path, {"version": 1, "exercises": [dict(STEP, cases=[case])]})
    assert str(err.value).startswith("lab_manifest.yaml: ex7 case 'c': ") and message in str(err.value)


def test_every_case_of_the_kit_manifest_passes_the_rules():
    """The rules refuse nothing the kit grades by, including the heads_error cases whose H does not divide."""
    lab = manifest.load()
    assert len(lab.cases) == 124
    heads_error = [c for c in lab.cases if c.check == "heads_error"]
    assert heads_error and all(c.shape["H"] % c.group_size for c in heads_error)
    assert max(c.world_size for c in lab.cases) <= manifest.MAX_WORLD_SIZE


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
                                          "shape": {"S": 8}, "visibility": "hidden"})
    lab = load(tmp_path, data)
    assert {c.timeout for c in lab.cases} == {7}
    assert {c.scheme for c in lab.cases} == {"striped"}
    assert [c.name for c in lab.select(hidden=False)] == ["positions"]
    with pytest.raises(ManifestError, match="unknown exercise ex9"):
        lab.select(["ex9"])


@pytest.mark.parametrize("case, message", [
    ({"check": "positions", "shape": {"S": 8, "s": 8}},
     "ex1 case 'c': unknown key 'shape.s': check 'positions' reads shape S"),
    ({"check": "positions", "shape": {"S": 8}, "params": {"dim": 1}},
     "ex1 case 'c': unknown key 'params.dim': check 'positions' reads params none"),
    ({"check": "shard", "shape": {"S": 8}, "params": {"dims": 1}},
     "ex1 case 'c': unknown key 'params.dims': check 'shard' reads params dim"),
    ({"check": "gather", "shape": {"B": 2, "F": 3}},
     "ex1 case 'c': 'shape' must give S (check 'gather' reads it)"),
])
def test_a_case_gives_only_what_its_check_reads(tmp_path, case, message):
    """A typo in a shape key or param is refused at load, naming the key, the case and what the check reads."""
    with pytest.raises(ManifestError) as err:
        load(tmp_path, with_case(name="c", world_size=2, **case))
    assert str(err.value) == "lab_manifest.yaml: " + message


def test_every_check_declares_what_it_reads():
    from grader import checks

    lab = manifest.load()
    for ex in lab.exercises:
        for name in checks.names(ex.id):
            reads = checks.get(ex.id, name).reads
            assert set(reads.required) <= set(reads.shape), (ex.id, name)
            assert len(set(reads.shape)) == len(reads.shape) and len(set(reads.params)) == len(reads.params)


def test_hidden_cases_are_numbered_per_exercise_in_manifest_order(tmp_path):
    data = with_case()
    data["exercises"][0]["cases"] += [
        {"name": f"secret_{i}", "check": "positions", "world_size": 2, "shape": {"S": 8}, "visibility": "hidden"}
        for i in range(2)]
    lab = load(tmp_path, data)
    assert [lab.label(c) for c in lab.cases] == ["ex1 - positions P=4", "ex1 - hidden case 1", "ex1 - hidden case 2"]
