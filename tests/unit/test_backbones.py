import pytest
import torch

from imgrec.errors import ImgrecError
from imgrec.models.backbones import torchvision_model


def test_small_input_gives_the_cifar_resnet_stem():
    model = torchvision_model("resnet18", in_channels=3, num_classes=10, small_input=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_weights_with_another_head_reinitialise_only_the_head(tmp_path):
    torch.manual_seed(0)
    source = torchvision_model("resnet18", in_channels=3, num_classes=10)
    torch.save(source.state_dict(), tmp_path / "resnet18.pt")
    torch.manual_seed(1)
    target = torchvision_model("resnet18", in_channels=3, num_classes=4, weights=str(tmp_path / "resnet18.pt"))
    source_state, target_state = source.state_dict(), target.state_dict()
    differing = [k for k in target_state if not torch.equal(target_state[k], source_state[k])
                 if target_state[k].shape == source_state[k].shape]
    assert differing == []
    assert target.fc.weight.shape == (4, 512) and source.fc.weight.shape == (10, 512)


def test_grayscale_stem_from_rgb_weights_sums_the_colour_filters(tmp_path):
    source = torchvision_model("resnet18", in_channels=3, num_classes=10)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    gray = torchvision_model("resnet18", in_channels=1, num_classes=10, weights=str(tmp_path / "w.pt"))
    assert torch.allclose(gray.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    x = torch.rand(2, 1, 64, 64)
    source.eval(), gray.eval()
    with torch.no_grad():  # a grey image in 3 equal channels is seen the same way
        assert torch.allclose(gray(x), source(x.expand(-1, 3, -1, -1)), atol=1e-4)


def test_frozen_backbone_trains_only_the_head(tmp_path):
    torch.save(torchvision_model("resnet18", 3, 10).state_dict(), tmp_path / "w.pt")
    model = torchvision_model("resnet18", 3, 5, weights=str(tmp_path / "w.pt"), freeze="backbone")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
    optimizer.step()
    after = model.state_dict()
    changed = sorted(k for k in after if not torch.equal(after[k], before[k]))
    assert changed == ["model.fc.bias", "model.fc.weight"]  # batch-norm statistics did not move either
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 512 * 5 + 5


def test_weights_problems_are_named(tmp_path, monkeypatch):
    with pytest.raises(ImgrecError, match="model.weights '.*missing.pt' does not exist"):
        torchvision_model("resnet18", 3, 10, weights=str(tmp_path / "missing.pt"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(ImgrecError, match=r"needs https://\S+, but IMGREC_OFFLINE=1 forbids.*put it at .*hub"):
        torchvision_model("resnet18", 3, 10, weights="ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(ImgrecError, match="is neither a file nor a torchvision weights name"):
        torchvision_model("resnet18", 3, 10, weights="imagenet")
    with pytest.raises(ImgrecError, match="freeze=backbone trains only the head, so it needs pretrained weights: set model.weights"):
        torchvision_model("resnet18", 3, 10, freeze="backbone")
    torch.save(torchvision_model("mobilenet_v3_small", 3, 10).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ImgrecError, match="fits only .* tensors of ResNet"):
        torchvision_model("resnet18", 3, 10, weights=str(tmp_path / "other.pt"))
