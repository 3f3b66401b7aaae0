import pytest
import torch
import torch.nn.functional as F

from imgrec.errors import ImgrecError
from imgrec.tasks.classification import ClassificationTask
from imgrec.tasks.classification_losses import balanced_class_weights
from imgrec.training.schedulers import constant
from imgrec.training.settings import TrainerSettings
from imgrec.training.trainer import Trainer


def build_loss(class_counts=(1, 1, 1, 1), **settings):
    """The classification task's loss for `settings` (task.loss), bound to a dataset of these class counts."""
    task = ClassificationTask(loss=settings)
    task.bind([str(i) for i in range(len(class_counts))], list(class_counts))
    return task.loss


def test_auto_class_weights_make_every_class_count_equally():
    weights = balanced_class_weights([10, 30, 60])
    assert weights.tolist() == pytest.approx([100 / 30, 100 / 90, 100 / 180])
    assert (weights * torch.tensor([10.0, 30, 60])).tolist() == pytest.approx([100 / 3] * 3)
    with pytest.raises(ImgrecError, match=r"needs training images of every class; counts are \[4, 0\]"):
        balanced_class_weights([4, 0])
    with pytest.raises(ImgrecError, match="class_weights has 2 values but the dataset has 3 classes"):
        build_loss(class_weights=[1, 2], class_counts=[1, 1, 1])
    with pytest.raises(ImgrecError, match=r"task.loss.class_weights='heavy' must be null, auto or a list of weights"):
        build_loss(class_weights="heavy")


def test_cross_entropy_options_match_torch():
    logits, labels = torch.randn(16, 4, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 4
    assert build_loss()(logits, labels) == pytest.approx(F.cross_entropy(logits, labels).item())
    smooth = build_loss(label_smoothing=0.1)(logits, labels)
    assert smooth == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=0.1).item())
    weighted = build_loss(class_weights=[1, 2, 3, 4])(logits, labels)
    assert weighted == pytest.approx(F.cross_entropy(logits, labels, weight=torch.tensor([1.0, 2, 3, 4])).item())


def test_focal_loss_follows_its_formula():
    logits, labels = torch.randn(16, 3, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 3
    p_true = logits.softmax(1)[torch.arange(16), labels]
    expected = ((1 - p_true) ** 2 * -torch.log(p_true)).mean()
    assert build_loss((1, 1, 1), focal_gamma=2.0)(logits, labels) == pytest.approx(expected.item(), rel=1e-5)
    assert build_loss((1, 1, 1), focal_gamma=0.0)(logits, labels) == pytest.approx(F.cross_entropy(logits, labels).item())


def make_trainer(accumulate_batches=1, grad_clip_norm=None, lr=0.1):
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    trainer = Trainer(model, optimizer, constant, ClassificationTask(), TrainerSettings(
        device="cpu", progress=False, accumulate_batches=accumulate_batches, grad_clip_norm=grad_clip_norm))
    trainer.scheduler, trainer.schedule_per_step = constant(optimizer, 1, 1), True
    return trainer


def test_two_accumulated_half_batches_equal_one_full_batch():
    x, y = torch.randn(8, 5, generator=torch.Generator().manual_seed(2)), torch.arange(8) % 3
    full = make_trainer()
    full.train_step(x, y)
    halves = make_trainer(accumulate_batches=2)
    halves.train_step(x[:4], y[:4], update=False)
    assert halves.step == 0  # no optimizer step yet
    halves.train_step(x[4:], y[4:], update=True)
    assert halves.step == 1
    for a, b in zip(full.model.parameters(), halves.model.parameters()):
        assert torch.allclose(a, b, atol=1e-7)


def test_gradient_clipping_bounds_the_update():
    x, y = torch.randn(8, 5) * 100, torch.arange(8) % 3
    trainer = make_trainer(grad_clip_norm=0.5, lr=1.0)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train_step(x, y)
    change = torch.cat([(p - b).flatten() for p, b in zip(trainer.model.parameters(), before)])
    assert change.detach().norm().item() == pytest.approx(0.5, rel=1e-4)  # SGD, lr 1: the update is the clipped gradient
    with pytest.raises(ImgrecError, match="trainer.grad_clip_norm=0 must be null or a number > 0"):
        make_trainer(grad_clip_norm=0)


def test_parameter_groups_split_head_backbone_and_decay():
    from imgrec.models.small_cnn import SmallCNN
    from imgrec.training.optim import parameter_groups

    model = SmallCNN(1, 4, widths=[4], convs_per_stage=1, hidden=[])
    groups = parameter_groups(model, lr=0.1, weight_decay=0.01, exempt_norm_and_bias=True, backbone_lr_scale=0.1)
    head = model.classifier[-1]
    by_role = {(round(g["lr"], 9), g["weight_decay"]): {id(p) for p in g["params"]} for g in groups}
    assert by_role[(0.1, 0.01)] == {id(head.weight)} and by_role[(0.1, 0.0)] == {id(head.bias)}
    conv, norm = model.features[0], model.features[1]
    assert by_role[(0.01, 0.01)] == {id(conv.weight)}
    assert by_role[(0.01, 0.0)] == {id(norm.weight), id(norm.bias)}
    assert len(parameter_groups(model, 0.1, 0.01, exempt_norm_and_bias=False)) == 1


def test_a_segmentation_models_backbone_is_its_backbone_or_encoder_part_and_a_unet_has_none():
    from torch import nn

    from imgrec.errors import ImgrecError
    from imgrec.models.unet import UNet
    from imgrec.training.optim import parameter_groups

    class Wrapped(nn.Module):  # as torchvision's models sit inside imgrec's MainOutput
        def __init__(self):
            super().__init__()
            self.model = nn.Module()
            self.model.backbone, self.model.classifier = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 2, 1)

    model = Wrapped()
    groups = parameter_groups(model, lr=0.1, weight_decay=0.0, exempt_norm_and_bias=False, backbone_lr_scale=0.1)
    by_scale = {g["lr_scale"]: {id(p) for p in g["params"]} for g in groups}
    assert by_scale[0.1] == {id(p) for p in model.model.backbone.parameters()}
    assert by_scale[1.0] == {id(p) for p in model.model.classifier.parameters()}
    with pytest.raises(ImgrecError, match="UNet has neither: leave optimizer.backbone_lr_scale=1.0"):
        parameter_groups(UNet(1, 2, depth=1, base_width=4), 0.1, 0.0, False, backbone_lr_scale=0.1)


def test_ema_after_k_steps_matches_the_closed_form():
    x, y = torch.randn(8, 5, generator=torch.Generator().manual_seed(4)), torch.arange(8) % 3
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    trainer = Trainer(model, optimizer, constant, ClassificationTask(),
                      TrainerSettings(device="cpu", progress=False, ema_decay=0.8))
    trainer.scheduler, trainer.schedule_per_step = constant(optimizer, 1, 1), True
    history = []
    for _ in range(4):
        trainer.train_step(x, y)
        history.append(model.weight.detach().clone())
    # the first update copies the weights; each later one keeps 0.8 of the average
    expected = history[0]
    for weights in history[1:]:
        expected = 0.8 * expected + 0.2 * weights
    assert torch.allclose(trainer.eval_model.weight, expected, atol=1e-6)
    assert not torch.allclose(trainer.eval_model.weight, model.weight)
