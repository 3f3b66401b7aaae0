"""Hostile configs and checkpoints: refused with a clear message before anything runs."""

import pytest
import torch

from imgrec.checkpoint import load_checkpoint, save_checkpoint
from imgrec.config import allow_targets, check_targets
from imgrec.errors import ImgrecError
from imgrec.eval import evaluate_checkpoint
from imgrec.train import train
from tests.conftest import tool_cfg

HOSTILE = ["os.system", "builtins.eval", "subprocess.run"]


@pytest.mark.parametrize("target", HOSTILE)
def test_a_hostile_target_on_the_command_line_is_refused_before_it_is_called(compose_cfg, tmp_path, target):
    marker = tmp_path / "marker"
    cfg = compose_cfg("dataset=fake", f"model._target_={target}", f"+model.command='touch {marker}'")
    with pytest.raises(ImgrecError, match=rf"model._target_='{target}' is not allowed: imgrec instantiates only"):
        train(cfg)
    assert not marker.exists() and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("target", HOSTILE)
def test_a_checkpoint_whose_stored_config_names_a_hostile_target_is_refused(digits_checkpoint, tmp_path, target):
    state = load_checkpoint(digits_checkpoint)
    state["config"]["model"] = {"_target_": target, "in_channels": 1, "num_classes": 10}
    state["config"]["dataset"]["_target_"] = target
    hostile = tmp_path / "sent_to_you.pt"
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "format_version")}, hostile)
    with pytest.raises(ImgrecError, match=f"'{target}' is not allowed"):
        evaluate_checkpoint(tool_cfg("eval", tmp_path / "eval", f"ckpt_path={hostile}"))


def test_allowed_targets_adds_a_trusted_package_only(monkeypatch):
    from omegaconf import OmegaConf

    import imgrec.config

    monkeypatch.setattr(imgrec.config, "_user_allowed_prefixes", [])  # this test's trust ends with it
    node = OmegaConf.create({"model": {"_target_": "mypkg.models.Net"}, "aug": [{"_target_": "os.system"}]})
    with pytest.raises(ImgrecError, match=r"model._target_='mypkg.models.Net' is not allowed.*allowed_targets=\[mypkg.models\]"):
        check_targets(node)
    allow_targets(["mypkg"])
    check_targets(node.model)
    with pytest.raises(ImgrecError, match=r"aug\[0\]._target_='os.system' is not allowed"):
        check_targets(node)


def test_every_shipped_config_uses_allowed_targets_only():
    from pathlib import Path

    from omegaconf import OmegaConf

    from imgrec.config import CONFIG_DIR

    from imgrec.config import ALLOWED_TARGET_PREFIXES

    targets = []
    for path in Path(CONFIG_DIR).rglob("*.yaml"):
        check_targets(OmegaConf.load(path), str(path.relative_to(CONFIG_DIR)))  # raises on a disallowed one
        targets += [line.split(":", 1)[1].strip() for line in path.read_text().splitlines()
                    if line.strip().startswith("_target_:")]
    assert len(targets) > 30  # every group's files were read
    assert all(target.startswith(ALLOWED_TARGET_PREFIXES) for target in targets)


def test_checkpoint_weights_alone_cannot_smuggle_code(tmp_path):
    """The pickle-level attack is covered in tests/unit/test_checkpoint.py; here, a tensor-only file with the
    marker but another architecture is refused by the rebuild, not executed."""
    save_checkpoint({"model": {"w": torch.zeros(1)}, "config": {"model": {"_target_": "imgrec.models.small_cnn.SmallCNN"}},
                     "class_names": ["a", "b"], "input_shape": [1, 8, 8], "normalization": {"mean": [0.5], "std": [0.5]}},
                    tmp_path / "odd.pt")
    from imgrec.inference import load_trained

    with pytest.raises(ImgrecError, match="its model could not be rebuilt"):
        load_trained(str(tmp_path / "odd.pt"), torch.device("cpu"))
