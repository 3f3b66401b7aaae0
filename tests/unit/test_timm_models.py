"""model=timm: skipped cleanly where the optional timm extra is not installed."""

import pytest
import torch

from imgrec.errors import ImgrecError

timm = pytest.importorskip("timm", reason="the timm extra is not installed")

from imgrec.models.timm_models import pretrained_file, timm_model  # noqa: E402


@pytest.mark.parametrize("channels", [1, 3])
def test_a_timm_model_by_name_classifies_the_dataset(channels):
    model = timm_model("test_efficientnet", in_channels=channels, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, channels, 28, 28)).shape == (2, 5)


def test_local_weights_load_with_a_fresh_head_for_other_classes(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("test_resnet", num_classes=7)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    model = timm_model("test_resnet", in_channels=3, num_classes=4, weights=str(tmp_path / "weights.pth"))
    own, saved = model.state_dict(), source.state_dict()
    head = {name for name in own if name.startswith(model.default_cfg["classifier"])}
    assert head and all(own[name].shape[0] == 4 for name in head)
    for name in set(own) - head:
        assert torch.equal(own[name], saved[name]), name  # the whole body came from the file


def test_frozen_backbone_trains_only_the_timm_head(tmp_path):
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), tmp_path / "w.pth")
    model = timm_model("test_resnet", 3, 3, weights=str(tmp_path / "w.pth"), freeze="backbone")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".fc." in name or name.startswith("model.fc") for name in trainable)


def test_timm_problems_are_named(tmp_path):
    with pytest.raises(ImgrecError, match="model.name='resnet_9000' is not a timm model; similar names: "):
        timm_model("resnet_9000", 3, 10)
    with pytest.raises(ImgrecError, match="model.weights 'missing.pth' does not exist"):
        timm_model("test_resnet", 3, 10, weights="missing.pth")
    with pytest.raises(ImgrecError, match=r"^model.weights=pretrained: timm weights for resnet18: needs https://"
                                          r"huggingface.co/timm/resnet18.a1_in1k, but IMGREC_OFFLINE=1 forbids"):
        pretrained_file(timm, "resnet18", cache_dir=str(tmp_path))
    with pytest.raises(ImgrecError, match="model.freeze=backbone trains only the head: it needs model.weights"):
        timm_model("test_resnet", 3, 10, freeze="backbone")


def test_hugging_faces_own_offline_switch_is_one_line_too(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("IMGREC_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets when huggingface_hub loads
    expected = (r"^model.weights=pretrained: timm weights for resnet18: could not download https://huggingface.co/"
                r"timm/resnet18.a1_in1k/resolve/main/model.safetensors: HF_HUB_OFFLINE=1 forbids downloads\. On a "
                "machine with internet run")
    with pytest.raises(ImgrecError, match=expected) as raised:
        pretrained_file(timm, "resnet18", cache_dir=str(tmp_path))
    assert "\n" not in str(raised.value)
