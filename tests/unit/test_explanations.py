"""Attribution maps land where the model looks, the automatic Grad-CAM layer of every model config, and the
class scores of a segmentation model."""

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from imgrec.config import CONFIG_DIR
from imgrec.errors import ImgrecError
from imgrec.explain.attributions import METHODS, attribution, mass_by_quadrant, peak
from imgrec.explain.layers import automatic_layer, named_layer
from imgrec.explain.targets import chosen_class, scores_of

SIZE = 32
QUADRANTS = ("top_left", "top_right", "bottom_left", "bottom_right")


def quadrant_slices(quadrant: str) -> tuple[slice, slice]:
    half = SIZE // 2
    row, column = divmod(QUADRANTS.index(quadrant), 2)
    return slice(row * half, (row + 1) * half), slice(column * half, (column + 1) * half)


class QuadrantWatcher(nn.Module):
    """Sees one quadrant only (the rest of the input is zeroed by a fixed mask), then fixed brightness and
    edge filters, global average pooling and a linear head trained to say whether a bright square is there."""

    def __init__(self, quadrant: str):
        super().__init__()
        mask = torch.zeros(1, 1, SIZE, SIZE)
        mask[(..., *quadrant_slices(quadrant))] = 1
        self.register_buffer("mask", mask)
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.ReLU())
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        with torch.no_grad():
            box, edge = torch.full((3, 3), 1 / 9), -torch.ones(3, 3) / 8
            edge[1, 1] = 1.0
            self.features[0].weight.copy_(torch.stack([box, edge, -edge, -box])[:, None])
            self.features[3].weight.zero_()
            for channel in range(4):
                self.features[3].weight[channel, channel, 1, 1] = 1.0

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(pixels * self.mask))


def squares(quadrants: list[str], generator: torch.Generator) -> torch.Tensor:
    """Dim noise with a bright 6x6 square somewhere inside each named quadrant."""
    images = torch.rand(len(quadrants), 1, SIZE, SIZE, generator=generator) * 0.2
    for image, quadrant in zip(images, quadrants):
        rows, columns = quadrant_slices(quadrant)
        row, column = (int(v) for v in torch.randint(1, SIZE // 2 - 7, (2,), generator=generator))
        image[0, rows.start + row: rows.start + row + 6, columns.start + column: columns.start + column + 6] = 1.0
    return images


def trained_watcher(quadrant: str, generator: torch.Generator) -> QuadrantWatcher:
    where = [QUADRANTS[int(i)] for i in torch.randint(0, 4, (128,), generator=generator)]
    images, labels = squares(where, generator), torch.tensor([int(w == quadrant) for w in where])
    torch.manual_seed(0)  # the head's initial weights
    model = QuadrantWatcher(quadrant).eval()
    with torch.no_grad():
        pooled = model.classifier[:2](model.features(images * model.mask))
    head = model.classifier[2]
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=200, line_search_fn="strong_wolfe")  # logistic regression

    def loss():
        optimizer.zero_grad()
        value = nn.functional.cross_entropy(head(pooled), labels)
        value.backward()
        return value

    optimizer.step(loss)
    assert (head(pooled).argmax(dim=1) == labels).float().mean() > 0.9
    return model


@pytest.mark.parametrize("quadrant", QUADRANTS)
def test_every_method_puts_the_mass_in_the_one_quadrant_the_model_sees(quadrant):
    generator = torch.Generator().manual_seed(0)
    model = trained_watcher(quadrant, generator)
    others = [q for q in QUADRANTS if q != quadrant]
    # a square where the model looks, and a distracting one in each other quadrant
    images = torch.maximum(squares([quadrant] * 3, generator), squares(others, generator))
    with torch.no_grad():
        assert model(images).argmax(dim=1).tolist() == [1, 1, 1]
    layer = automatic_layer(model, images[:1], per_pixel=False)
    assert layer.name == "features" and layer.shape == (4, 16, 16)
    for method in METHODS:
        for image in images:
            pixels = image[None]
            found = attribution(method, model, pixels, 1, layer.module, torch.zeros_like(pixels), steps=16)
            assert found.shape == (SIZE, SIZE)
            mass = mass_by_quadrant(found)
            assert mass[quadrant] > 0.85, (method, mass)
            assert all(mass[other] < 0.06 for other in others), (method, mass)
            rows, columns = quadrant_slices(quadrant)
            row, column = peak(found)
            assert rows.start <= row < rows.stop and columns.start <= column < columns.stop


def test_mass_by_quadrant_and_peak_on_a_known_map():
    found = torch.tensor([[1.0, 0.0, 0.0, -5.0],
                          [0.0, 0.0, 2.0, 0.0],
                          [0.0, 0.0, 0.0, 0.0],
                          [0.0, 3.0, 0.0, 4.0]])
    assert mass_by_quadrant(found) == pytest.approx({"top_left": 0.1, "top_right": 0.2, "bottom_left": 0.3,
                                                     "bottom_right": 0.4})  # the negative value counts for nothing
    assert peak(found) == (3, 3)
    assert mass_by_quadrant(-found.abs()) is None


# layer=auto's choice for each model file at 64 px: the last convolutional stage (see explain/layers.py)
EXPECTED_LAYERS = {
    "small_cnn": "features.10", "resnet18": "layer4", "resnet50": "layer4", "timm": "layer4",
    "convnext_tiny": "features", "efficientnet_b0": "features", "mobilenet_v3_small": "features",
    "vgg16_bn": "features.42", "unet": "downs.3", "smp_unet": "encoder.layer4",
    "fcn_resnet50": "model.backbone.layer4", "deeplabv3_resnet50": "model.backbone.layer4",
    "deeplabv3_mobilenet_v3_large": "model.backbone.16", "lraspp_mobilenet_v3_large": "model.backbone.16",
}
OPTIONAL_PACKAGES = {"timm": "timm", "smp_unet": "segmentation_models_pytorch"}
# dilated ResNet-50s keep an 8th of the input: 32 px still leaves a 4x4 map, at a quarter of 64 px's cost
IMAGE_SIZES = {"fcn_resnet50": 32, "deeplabv3_resnet50": 32}


# detectors aside: imgrec-explain refuses detection checkpoints (it explains a class score per image or pixel)
EXPLAINED_MODELS = sorted(path.stem for path in (CONFIG_DIR / "model").glob("*.yaml")
                          if "imgrec.models.detectors." not in path.read_text())


@pytest.mark.parametrize("name", EXPLAINED_MODELS)
def test_every_model_config_has_an_automatic_layer_grad_cam_can_read(name):
    if name in OPTIONAL_PACKAGES:
        pytest.importorskip(OPTIONAL_PACKAGES[name], reason=f"model={name} needs an optional package")
    cfg = OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml")
    cfg.in_channels, cfg.num_classes = 3, 3
    torch.manual_seed(0)
    model = instantiate(cfg).eval()
    size = IMAGE_SIZES.get(name, 64)
    pixels = torch.rand(1, 3, size, size)
    with torch.no_grad():
        per_pixel = model(pixels).ndim == 4
    layer = automatic_layer(model, pixels, per_pixel)
    assert layer.spatial and dict(model.named_modules())[layer.name] is layer.module
    if name in EXPECTED_LAYERS:  # a new model file is still checked below; add its layer here once chosen
        assert layer.name == EXPECTED_LAYERS[name]
    scores = scores_of(model, pixels, "masks" if per_pixel else "class_scores", lambda logits: logits.argmax(dim=1))
    found = attribution("gradcam", scores.scores, pixels, scores.predicted, layer.module)
    assert found.shape == (size, size) and torch.isfinite(found).all() and (found >= 0).all()


def test_a_layer_too_deep_for_small_images_gives_way_to_the_stage_before():
    model = instantiate(OmegaConf.load(CONFIG_DIR / "model" / "resnet18.yaml"), in_channels=3, num_classes=2).eval()
    assert automatic_layer(model, torch.rand(1, 3, 32, 32), per_pixel=False).name == "layer3"  # layer4 is 1x1


def test_an_unknown_or_flat_layer_name_lists_the_valid_ones():
    from imgrec.models.small_cnn import SmallCNN

    model, pixels = SmallCNN(1, 10, convs_per_stage=2).eval(), torch.rand(1, 1, 16, 16)
    assert named_layer(model, pixels, "features.3").shape == (32, 16, 16)
    with pytest.raises(ImgrecError, match=r"layer=layer4: SmallCNN has no module named 'layer4'; choose one of: "
                                          r"features.0, .*features.19, features.20, features, classifier.0 "
                                          r"\(or layer=auto\)$"):
        named_layer(model, pixels, "layer4")
    with pytest.raises(ImgrecError, match=r"'classifier.2' of SmallCNN does not output an image-like"):
        named_layer(model, pixels, "classifier.2")
    resnet = instantiate(OmegaConf.load(CONFIG_DIR / "model" / "resnet50.yaml"), in_channels=3, num_classes=2).eval()
    with pytest.raises(ImgrecError, match=r"choose one of \(\d+ earlier ones not shown\): .*layer4\.2\.relu, "
                                          r"layer4\.2, layer4, avgpool \(or layer=auto\)$"):
        named_layer(resnet, torch.rand(1, 3, 64, 64), "layer5")


class BrightIsForeground(nn.Module):
    """Per-pixel logits from a local mean: background (0.5 - m), foreground (m - 0.5)."""

    def __init__(self):
        super().__init__()
        self.smooth = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        self.head = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.smooth.weight.fill_(1 / 9)
            self.head.weight.copy_(torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1))
            self.head.bias.copy_(torch.tensor([0.5, -0.5]))

    def forward(self, pixels):
        return self.head(torch.relu(self.smooth(pixels)))


def test_a_segmentation_class_is_explained_by_the_pixels_predicted_as_it():
    image = torch.zeros(1, 1, SIZE, SIZE)
    image[..., 20:28, 18:30] = 1.0  # in the bottom-right quadrant
    model = BrightIsForeground().eval()
    scores = scores_of(model, image, "masks", lambda logits: logits.argmax(dim=1))
    assert scores.predicted == 1  # foreground, though background holds more pixels
    assert scores.probabilities[1] > 0.5 and scores.probabilities[0] > 0.5  # each over its own pixels
    for method in METHODS:
        found = attribution(method, scores.scores, image, 1, model.smooth, torch.zeros_like(image), steps=8)
        assert mass_by_quadrant(found)["bottom_right"] > 0.95, method
    binary = nn.Conv2d(1, 1, 1)  # one foreground logit, as binary segmentation models give
    with torch.no_grad():
        binary.weight.fill_(4.0), binary.bias.fill_(-2.0)
    scores = scores_of(binary, image, "masks", lambda logits: (logits[:, 0] > 0).long())
    assert scores.predicted == 1 and scores.probabilities[1] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())


def test_the_target_is_a_class_name_first_then_an_index():
    names = ["cat", "dog", "1"]
    assert chosen_class("predicted", names) is None
    assert chosen_class("dog", names) == 1
    assert chosen_class(1, names) == 2  # "1" is a class name
    assert chosen_class(0, names) == 0
    with pytest.raises(ImgrecError, match=r"target='cow' is neither a class of this checkpoint nor an index 0-2; "
                                          r"use target=predicted or one of: cat, dog, 1"):
        chosen_class("cow", names)
    with pytest.raises(ImgrecError, match=r"target=3 is neither"):
        chosen_class(3, names)

