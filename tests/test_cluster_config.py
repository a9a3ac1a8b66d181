"""ray_cluster.yaml is a valid Ray cluster-launcher config (Ray's own schema and defaults)."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_cluster_config_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    prepared = prepare_config(config)  # fills defaults as `ray up` does
    validate_config(prepared)  # raises on any schema violation
    assert prepared["head_node_type"] in prepared["available_node_types"]
    assert any(t != prepared["head_node_type"] for t in prepared["available_node_types"])
    assert any("make install" in cmd for cmd in prepared["setup_commands"])
    assert "~/zeroseg" in prepared["file_mounts"]


def test_cluster_config_with_a_typo_is_rejected():
    import jsonschema
    import pytest
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    config["setup_comands"] = config.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))
