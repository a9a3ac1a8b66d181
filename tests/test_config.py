"""Typed configs: unknown keys and wrong types fail with the dotted key named."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from zeroseg.platform.config import config_hash, from_dict, load_config, to_dict
from zeroseg.platform.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Job:
    name: str
    steps: int = 10
    precision: Literal["fp32", "bf16"] = "fp32"
    sigmas: list[float] = field(default_factory=lambda: [2.0, 5.0])
    checkpoint: Path | None = None
    optim: Optim = field(default_factory=Optim)


def test_builds_nested_and_coerces_ints_to_floats():
    job = from_dict(Job, {"name": "a", "optim": {"lr": 1}, "sigmas": [1, 2.5],
                          "checkpoint": "x.pt"})
    assert job.optim.lr == 1.0 and isinstance(job.optim.lr, float)
    assert job.sigmas == [1.0, 2.5] and job.checkpoint == Path("x.pt")
    assert to_dict(job)["checkpoint"] == "x.pt"


@pytest.mark.parametrize("data,needle", [
    ({"name": "a", "stesp": 3}, "unknown key 'stesp' (did you mean 'steps'?)"),
    ({"name": "a", "optim": {"lrr": 1}}, "unknown key 'optim.lrr'"),
    ({"name": "a", "steps": "3"}, "steps must be an integer"),
    ({"name": "a", "steps": True}, "steps must be an integer"),
    ({"name": "a", "precision": "fp16"}, "precision must be one of ['fp32', 'bf16']"),
    ({"name": "a", "optim": {"betas": [0.9]}}, "optim.betas must have 2 items"),
    ({"name": "a", "sigmas": [1, "x"]}, "sigmas[1] must be a number"),
    ({"steps": 3}, "missing required key 'name'"),
])
def test_errors_name_the_key(data, needle):
    with pytest.raises(ConfigError) as info:
        from_dict(Job, data, where="job.yaml")
    message = str(info.value)
    assert needle in message and message.startswith("job.yaml: ") and "\n" not in message


def test_load_config_with_overrides_and_stable_hash(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: a\noptim:\n  lr: 0.001\n")
    job = load_config(Job, path, {"steps": 5})
    assert job.steps == 5 and job.optim.lr == 0.001
    same = from_dict(Job, {"optim": {"lr": 0.001}, "steps": 5, "name": "a"})
    assert config_hash(job) == config_hash(same)
    assert config_hash(job) != config_hash(from_dict(Job, {"name": "a", "steps": 6}))
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Job, path)


def test_set_values_are_json_or_yaml_flow_collections():
    from zeroseg.platform.config import parse_overrides

    got = parse_overrides(["a=10", "b=paper", 'c=["test"]', "d=[test, validation]",
                           "e={steps: 5}", "f=1e-3"])
    assert got == {"a": 10, "b": "paper", "c": ["test"], "d": ["test", "validation"],
                   "e": {"steps": 5}, "f": 1e-3}
    with pytest.raises(ConfigError, match=r"--set 'g=\[a, b': the value is neither JSON"):
        parse_overrides(["g=[a, b"])
