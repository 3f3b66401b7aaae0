"""Gradient attacks on a classifier: FGSM and PGD (L-inf and L2), in the image's own pixel scale.

Budgets are in [0, 1] pixel units whatever `dataset.normalize` says: the attack works on un-normalised
images and the model's normalisation is part of the differentiated function (`PixelModel`), so eps 8/255
means the same for every model. Adversarial images are clamped to valid pixels. The model is put in eval
mode for the attack (dropout off, batch-norm running statistics, never updated) and given back in the
mode it came in; gradients flow to the images only, never into the weights' .grad.
"""

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from imgrec.errors import ImgrecError
from imgrec.values import is_number, is_whole

NORMS = ("linf", "l2")


class PixelModel(nn.Module):
    """The model as a function of [0, 1] pixels: (x - mean) / std, then the model."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels - self.mean) / self.std)


@contextmanager
def evaluating(model: nn.Module):
    """Eval mode for the attack's forward passes, the caller's mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def check_budget(eps, norm: str = "linf", steps: int = 1, step_size=None, eps_key: str = "attack eps",
                 prefix: str = "attack ") -> None:
    """Raise for a budget that is not one; messages name `eps_key` and `prefix`+setting (pgd.steps=0)."""
    if norm not in NORMS:
        raise ImgrecError(f"{prefix}norm={norm!r} must be one of {', '.join(NORMS)}")
    upper = 1.0 if norm == "linf" else float("inf")
    if not is_number(eps) or not 0 <= eps <= upper:
        scale = "in [0, 1] (L-inf, pixels in [0, 1]: 8/255 = 0.0314)" if norm == "linf" else \
            ">= 0 (an L2 length in [0, 1] pixels)"
        raise ImgrecError(f"{eps_key}={eps!r} must be {scale}")
    if not is_whole(steps, 1):
        raise ImgrecError(f"{prefix}steps={steps!r} must be a whole number >= 1")
    if step_size is not None and (not is_number(step_size) or step_size <= 0):
        raise ImgrecError(f"{prefix}step_size={step_size!r} must be a number > 0 (null: 2.5 x eps / steps)")


def input_gradient(loss: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """d loss / d pixels; a model whose output does not depend differentiably on its input (it detaches it,
    or runs outside autograd) cannot be attacked by gradients, and says so instead of failing in autograd."""
    gradient = torch.autograd.grad(loss, pixels, allow_unused=True)[0] if loss.requires_grad else None
    if gradient is None:
        raise ImgrecError("the model's output is not differentiable with respect to its input (it detaches or "
                          "leaves autograd somewhere): gradient attacks and adversarial training cannot run on it "
                          "(imgrec-robustness attacks=[] still measures the corruptions)")
    return gradient


def _loss_gradient(model: nn.Module, pixels: torch.Tensor, labels, loss_fn=F.cross_entropy,
                   loss_scale: float = 1.0) -> torch.Tensor:
    """The loss's gradient with respect to the pixels only (the weights' .grad is never touched). A loss scale
    keeps float16 gradients from underflowing to zero; sign and direction do not depend on it."""
    pixels = pixels.detach().requires_grad_(True)
    loss = loss_fn(model(pixels).float(), labels)
    gradient = input_gradient(loss * loss_scale if loss_scale != 1.0 else loss, pixels)
    return gradient if loss_scale == 1.0 else torch.nan_to_num(gradient, nan=0.0, posinf=1.0, neginf=-1.0)


def fgsm(model: nn.Module, pixels: torch.Tensor, labels, eps: float, loss_fn=F.cross_entropy) -> torch.Tensor:
    """One signed-gradient step of size eps (Goodfellow et al., 2015)."""
    check_budget(eps)
    with evaluating(model):
        gradient = _loss_gradient(model, pixels, labels, loss_fn)
    return (pixels + eps * gradient.sign()).clamp(0, 1).detach()


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    lengths = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return delta * torch.clamp(eps / lengths, max=1.0)


def pgd(model: nn.Module, pixels: torch.Tensor, labels, eps: float, steps: int = 10,
        step_size: float | None = None, norm: str = "linf", random_start: bool = True,
        generator: torch.Generator | None = None, loss_fn=F.cross_entropy, loss_scale: float = 1.0) -> torch.Tensor:
    """Projected gradient descent (Madry et al., 2018): `steps` steps of `step_size` (default 2.5 eps / steps)
    up the loss, each projected back into the eps-ball around the image and into [0, 1]; from a random point
    of the ball when random_start (uniform for L-inf, a random direction and radius for L2). `labels` is
    whatever `loss_fn` takes (class indices, or mixup's class probabilities); the random start draws from
    `generator`, or from torch's global generator (which a checkpoint saves) when None."""
    check_budget(eps, norm, steps, step_size)
    step_size = 2.5 * eps / steps if step_size is None else step_size
    original = pixels.detach()
    adversarial = original.clone()
    if random_start and eps > 0:
        if norm == "linf":
            noise = torch.rand(original.shape, generator=generator, device="cpu").to(original.device) * 2 - 1
            delta = noise * eps
        else:
            direction = torch.randn(original.shape, generator=generator, device="cpu").to(original.device)
            radius = torch.rand((len(original), 1, 1, 1), generator=generator, device="cpu").to(original.device)
            delta = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * radius * eps
        adversarial = (original + delta).clamp(0, 1)
    with evaluating(model):
        for _ in range(steps):
            gradient = _loss_gradient(model, adversarial, labels, loss_fn, loss_scale)
            if norm == "linf":
                step = gradient.sign()
            else:
                step = gradient / (gradient.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-10)
            adversarial = adversarial.detach() + step_size * step
            adversarial = (original + _project(adversarial - original, eps, norm)).clamp(0, 1)
    return adversarial.detach()
