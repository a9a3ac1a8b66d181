"""Resuming training never runs code from a checkpoint, and falls back past bad checkpoints.

A checkpoint's manifests are sha256s it writes about itself: a crafted checkpoint with a
recomputed manifest passes them. What must hold is that its files are only ever read with
``torch.load(weights_only=True)``: the crafted payload below writes a marker file when
unpickled, and the marker must never appear. Real DeepSpeed checkpoints come from short
local-mode runs (Ray Train's local mode, this process, DeepSpeed ZeRO-2).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from zeroseg.platform.training.checkpoints import (
    INFO_FILE,
    MANIFEST_PREFIX,
    CheckpointError,
    check_tensor_files,
    load_tensor_file,
    verify_checkpoint,
    write_manifest,
)
from zeroseg.platform.training.config import train_config_from_dict

STEPS = 4


class Payload:
    """Unpickling this runs ``exec``: it writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return exec, (f"open({self.marker!r}, 'w').write('payload ran')",)


def config_dict(root: Path, run_dir: Path, **train: Any) -> dict[str, Any]:
    return {
        "data": {"root": str(root)},
        "model": {"size": "tiny", "train_num_points": 1024},
        "train": {"steps": STEPS, "batch_size": 2, "seed": 0, "checkpoint_every": 2,
                  "log_every": 1, "eval": False, **train},
        "distributed": {"workers": 0, "zero_stage": 2, "precision": "fp32"},
        "output": {"run_dir": str(run_dir)},
    }


def weights(segmenter_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(segmenter_dir / "model.pt", map_location="cpu", weights_only=True)


def craft(checkpoint: Path, marker: Path) -> Path:
    """Replace the model states of ``checkpoint`` by the payload and recompute the manifest,
    as someone who can write the folder would."""
    target = next(checkpoint.glob("step_*/mp_rank_00_model_states.pt"))
    state = torch.load(target, map_location="cpu", weights_only=True)
    state["module"] = {"weight": Payload(marker)}
    torch.save(state, target)
    (checkpoint / f"{MANIFEST_PREFIX}0.json").unlink()
    write_manifest(checkpoint, 0)
    verify_checkpoint(checkpoint)  # the manifest is valid: it is not what protects us
    return target


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from zeroseg.platform.data.synthetic.generate import generate

    root = tmp_path_factory.mktemp("data") / "tiny"
    generate("tiny", 0, root, workers=1)
    return root


@pytest.fixture(scope="module")
def reference(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted local-mode run: checkpoints at steps 2 and 4, the exported weights."""
    from zeroseg.platform.training.ray_runner import run_training

    run_dir = tmp_path_factory.mktemp("reference") / "run"
    config = train_config_from_dict(config_dict(tiny, run_dir))
    result = run_training(config)
    checkpoints = sorted((run_dir / "checkpoints").glob("step_*"))
    assert [c.name for c in checkpoints] == ["step_00000002", "step_00000004"]
    return {"run_dir": run_dir, "weights": weights(result.segmenter_dir),
            "checkpoints": checkpoints}


def test_deepspeed_zero2_checkpoints_load_with_weights_only(reference):
    for checkpoint in reference["checkpoints"]:
        check_tensor_files(checkpoint)
        optim = next(checkpoint.glob("step_*/*optim_states.pt"))
        state = load_tensor_file(optim)
        assert "optimizer_state_dict" in state  # the loss scaler and ZeRO stage came through
        with pytest.raises(Exception, match="Weights only load failed"):
            torch.load(optim, weights_only=True)  # without zeroseg's three allowed types


def test_crafted_checkpoint_with_a_valid_manifest_is_refused_and_never_runs(
        reference, tiny, tmp_path, capsys):
    from zeroseg.platform.cli import main

    marker = tmp_path / "marker"
    crafted = tmp_path / "crafted"
    shutil.copytree(reference["checkpoints"][0], crafted)
    target = craft(crafted, marker)

    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config_dict(tiny, tmp_path / "run")))
    code = main(["train", "segmenter", str(config_path), "--set",
                 f"train.resume_from={crafted}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert str(target) in err and "refused" in err and "it needs exec" in err
    assert not marker.exists()
    assert not (tmp_path / "run").exists()  # refused before anything was written
    with pytest.raises(CheckpointError, match="refused"):
        load_tensor_file(target)
    assert not marker.exists()

    # The payload is live: DeepSpeed's own reader (weights_only=False) would have run it.
    torch.load(target, map_location="cpu", weights_only=False)
    assert marker.read_text() == "payload ran"


def test_resume_falls_back_past_half_written_and_crafted_checkpoints(reference, tiny, tmp_path,
                                                                    caplog):
    """The newest checkpoint of a run is half-written (info file, no manifest: a kill between
    the two writes) or crafted: the re-run skips it, says why, resumes from step 2 and ends with
    the uninterrupted run's weights."""
    from zeroseg.platform.training.ray_runner import run_training

    marker = tmp_path / "marker"
    for case in ("half-written", "crafted"):
        run_dir = tmp_path / case
        shutil.copytree(reference["run_dir"] / "checkpoints", run_dir / "checkpoints")
        newest = run_dir / "checkpoints" / "step_00000004"
        if case == "half-written":
            (newest / f"{MANIFEST_PREFIX}0.json").unlink()
            reason = "checkpoint manifest of rank 0 not found"
        else:
            craft(newest, marker)
            reason = "refused, not a plain tensor file"
        assert json.loads((newest / INFO_FILE).read_text())["step"] == STEPS
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="zeroseg.platform.training.ray_runner"):
            result = run_training(train_config_from_dict(config_dict(tiny, run_dir)))
        skipped = [r.getMessage() for r in caplog.records if "skipping checkpoint" in
                   r.getMessage()]
        assert len(skipped) == 1 and str(newest) in skipped[0] and reason in skipped[0], skipped
        assert result.summary["start_step"] == 2
        resumed = weights(result.segmenter_dir)
        assert all(torch.equal(resumed[k], v) for k, v in reference["weights"].items())
    assert not marker.exists()


def test_an_explicit_resume_from_without_manifest_is_an_error(reference, tiny, tmp_path):
    from zeroseg.platform.training.ray_runner import prepare

    broken = tmp_path / "broken"
    shutil.copytree(reference["checkpoints"][1], broken)
    (broken / f"{MANIFEST_PREFIX}0.json").unlink()
    config = train_config_from_dict(config_dict(tiny, tmp_path / "run",
                                                resume_from=str(broken)))
    with pytest.raises(CheckpointError, match="manifest of rank 0 not found"):
        prepare(config)
