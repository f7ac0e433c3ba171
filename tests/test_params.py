"""params.yaml validation: every mistake is one clear line naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import repo_params

from folderfit.errors import PipelineError
from folderfit.params import Params, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]


def test_repository_params_parse():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    assert params.strategy in ("feature_extract", "fine_tune", "full_tune", "auto")


def test_every_key_has_a_comment():
    for line in (REPO / "params.yaml").read_text().splitlines():
        if re.match(r"^\s*[a-z_]+:\s*\S", line):  # a key with a value
            assert "#" in line, f"params.yaml key without a comment: {line!r}"


@pytest.mark.parametrize("raw, pattern", [
    ({"stratgy": "fine_tune"}, r"unknown key 'stratgy' \(did you mean 'strategy'\?\)"),
    ({"data": {"val_fracton": 0.2}}, r"unknown key 'data.val_fracton' \(did you mean 'val_fraction'\?\)"),
    ({"num_epochs": "ten"}, r"'num_epochs' must be int"),
    ({"lr": True}, r"'lr' must be float"),
    ({"strategy": "finetune"}, r"'strategy' is 'finetune'.*choose one of: feature_extract, fine_tune"),
    ({"num_epochs": 0}, r"'num_epochs' must be > 0"),
    ({"data": {"val_fraction": 0.6, "test_fraction": 0.5}}, r"val_fraction \+ data.test_fraction"),
    ({"data": "images/"}, r"'data' must be a mapping"),
    ({"evaluate": {"tta": "mirror"}}, r"'evaluate.tta' is 'mirror'.*auto, flip, none"),
    ({"augment": {"hflip": "maybe"}}, r"'augment.hflip' must be true, false or auto, got 'maybe'"),
    ({"refit_head": "yes"}, r"'refit_head' must be bool"),
])
def test_invalid_params_are_reported_by_key(raw, pattern):
    with pytest.raises(PipelineError, match=pattern) as info:
        parse_params(repo_params(raw))
    assert "\n" not in str(info.value)


def test_ints_are_accepted_for_floats():
    assert parse_params(repo_params({"lr": 1})).lr == 1.0


def test_a_missing_key_is_named():
    raw = repo_params()
    del raw["augment"]["min_scale"]
    with pytest.raises(PipelineError, match=r"missing key 'augment.min_scale'"):
        parse_params(raw)


def test_the_code_holds_no_defaults():
    """params.yaml is the one source of defaults: no dataclass field has a default."""
    import dataclasses

    from folderfit import params

    for cls in (params.Params, params.DataParams, params.AugmentParams, params.EvaluateParams, params.DemoParams):
        for f in dataclasses.fields(cls):
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, \
                f"{cls.__name__}.{f.name} has a default in code"


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("lr: [0.1\n")
    with pytest.raises(PipelineError, match="params.yaml: not valid YAML"):
        load_params(path)


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(repo_params({"batchsize": 8})))
    with pytest.raises(PipelineError, match="did you mean 'batch_size'"):
        load_params(path)
