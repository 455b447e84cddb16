"""Recipes: parsing, validation errors that name the fix, YAML/JSON round trips."""

import json

import pytest

import netslim
from netslim.errors import ConfigError, DataNotFoundError
from netslim.recipe import dump_recipe, load_recipe, parse_recipe


def test_python_list_and_single_stage():
    stages = parse_recipe([{"method": "wanda", "ratio": 0.6}, netslim.MagnitudeConfig(pattern="2:4")])
    assert stages[0].ratio == 0.6 and stages[1].nm == (2, 4)
    assert parse_recipe({"method": "magnitude"})[0].ratio == 0.5


@pytest.mark.parametrize(
    "stage, message",
    [
        ({"method": "wandaa"}, r"unknown method 'wandaa'; did you mean 'wanda'\? \(registered: .*magnitude.*\)"),
        ({"method": "wanda", "ratoi": 0.5}, r"unknown setting 'ratoi' for wanda; did you mean 'ratio'\?"),
        ({"method": "wanda", "sparsity": 0.5}, r"wanda: 'sparsity' is now spelled ratio"),
        ({"method": "gptq", "damp_percent": 0.01}, r"gptq: 'damp_percent' is now spelled damp"),
        ({"method": "slicegpt", "slicing": 0.2}, r"slicegpt: 'slicing' is now spelled ratio"),
        ({"method": "wanda", "ratio": 1.5}, r"wanda: ratio=1.5: must be in \(0, 1\)"),
        ({"method": "wanda", "ratio": 0}, r"ratio=0: must be in \(0, 1\)"),
        ({"method": "wanda", "pattern": "4:2"}, r"pattern '4:2': use 'unstructured' or 'N:M'"),
        ({"method": "wanda", "pattern": "2:4", "ratio": 0.3}, r"contradicts pattern 2:4"),
        ({"ratio": 0.5}, r"missing 'method'"),
        ([], r"recipe is empty"),
        (["wanda"], r"a stage must be a mapping"),
    ],
)
def test_bad_stages_give_one_line_errors(stage, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_recipe(stage)
    assert "\n" not in str(info.value)


def test_errors_name_the_stage_in_multi_stage_recipes():
    with pytest.raises(ConfigError, match=r"^stage 2: unknown setting 'bits'"):
        parse_recipe([{"method": "wanda"}, {"method": "magnitude", "bits": 4}])


def test_configs_are_frozen():
    cfg = netslim.WandaConfig()
    with pytest.raises(Exception):
        cfg.ratio = 0.9


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_files_round_trip(tmp_path, suffix):
    stages = parse_recipe([{"method": "wanda", "pattern": "4:8"}, {"method": "magnitude", "ratio": 0.3}])
    path = tmp_path / f"r{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps([s.model_dump(mode="json") for s in stages]))
    else:
        path.write_text(dump_recipe(stages))
    assert load_recipe(path) == stages


def test_recipe_file_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="recipe file .* not found"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- method: wanda\n  ratio: [0.5\n")
    with pytest.raises(ConfigError, match="does not parse"):
        load_recipe(bad)
    stages = tmp_path / "stages.yaml"
    stages.write_text("stages:\n  - method: magnitude\n")
    assert load_recipe(stages)[0].method == "magnitude"
