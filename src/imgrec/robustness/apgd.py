"""APGD-CE (Croce & Hein, 2020): PGD on the cross-entropy that picks its own step size, AutoAttack's first attack.

"Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks" (ICML 2020),
Algorithm 1. Each image starts at a random point of the eps-ball with step size 2 eps and moves with momentum
0.75; at checkpoints (after 22% of the steps, then ever shorter stretches down to 6%) an image whose loss rose
in fewer than rho of the steps since the last checkpoint, or whose step size and best loss both stood still,
halves its step size and goes back to its best point. Written here rather than taken from torchattacks (a
test-only reference) so that it shares attacks.py's contract: [0, 1] pixels, eval mode, images' gradients only.
"""

import torch
import torch.nn.functional as F
from torch import nn

from imgrec.errors import ImgrecError
from imgrec.robustness.attacks import check_budget, evaluating, input_gradient
from imgrec.values import is_number, is_whole

MOMENTUM = 0.75


def apgd(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, eps: float, steps: int = 100,
         norm: str = "linf", restarts: int = 1, generator: torch.Generator | None = None,
         rho: float = 0.75) -> torch.Tensor:
    """Adversarial pixels: for each image, the first misclassified point found, or else its highest-loss point.

    Each restart attacks only the images no earlier restart (nor the clean image) has misclassified, from a new
    random start; an image the model gets wrong unattacked is returned as it is."""
    check_budget(eps, norm, steps)
    if not is_whole(restarts, 1):
        raise ImgrecError(f"apgd restarts={restarts!r} must be a whole number >= 1")
    if not is_number(rho) or not 0 < rho <= 1:
        raise ImgrecError(f"apgd rho={rho!r} must be in (0, 1] (the paper's 0.75)")
    original = pixels.detach()
    adversarial = original.clone()
    if eps == 0:
        return adversarial
    with evaluating(model):
        with torch.no_grad():
            unbroken = model(original).argmax(1) == labels
        highest_loss = torch.full((len(labels),), -float("inf"), device=original.device)
        for _ in range(restarts):
            todo = unbroken.nonzero().squeeze(1)
            if len(todo) == 0:
                break
            found, fooled, loss = _one_run(model, original[todo], labels[todo], eps, steps, norm, generator, rho)
            keep = fooled | (loss > highest_loss[todo])
            adversarial[todo[keep]], highest_loss[todo[keep]] = found[keep], loss[keep]
            unbroken[todo[fooled]] = False
    return adversarial


def _one_run(model, original, labels, eps, steps, norm, generator, rho):
    """(points, fooled, their loss) of one APGD run from a random start; the points are the first misclassified
    ones where `fooled`, the highest-loss ones elsewhere."""
    def into_ball(point):
        delta = point - original
        if norm == "linf":
            delta = delta.clamp(-eps, eps)
        else:
            delta = delta * (eps / _lengths(delta).clamp_min(1e-12)).clamp(max=1.0)
        return (original + delta).clamp(0, 1)  # clamping to pixels only shortens delta: it stays in the ball

    def ascent(gradient):
        return gradient.sign() if norm == "linf" else gradient / (_lengths(gradient) + 1e-12)

    # The random numbers come from the CPU generator whatever the device, so a seed means the same everywhere.
    shape, device = original.shape, original.device
    if norm == "linf":
        start = eps * (2 * torch.rand(shape, generator=generator) - 1).to(device)
    else:  # AutoAttack's L2 start: a random direction at the ball's rim
        direction = torch.randn(shape, generator=generator).to(device)
        start = eps * direction / _lengths(direction)
    point = into_ball(original + start)
    loss, gradient, wrong = _loss_and_gradient(model, point, labels)
    best_point, best_loss, best_gradient = point.clone(), loss.clone(), gradient.clone()
    fooled, fooled_point = wrong.clone(), point.clone()
    previous, previous_loss = point.clone(), loss.clone()
    step_size = torch.full((len(labels), 1, 1, 1), 2.0 * eps, device=device)
    rises = torch.zeros(len(labels), device=device)
    halved_last = torch.zeros(len(labels), dtype=torch.bool, device=device)
    best_at_check, since_check = best_loss.clone(), 0
    checkpoints = _checkpoints(steps)
    for step in range(1, steps + 1):
        momentum = MOMENTUM if step > 1 else 1.0  # the first step has no previous step to carry on
        plain = into_ball(point + step_size * ascent(gradient))
        point, previous = into_ball(point + momentum * (plain - point) + (1 - momentum) * (point - previous)), point
        loss, gradient, wrong = _loss_and_gradient(model, point, labels)
        newly = wrong & ~fooled
        fooled_point[newly], fooled = point[newly], fooled | wrong
        rises += (loss > previous_loss).float()
        previous_loss = loss
        better = loss > best_loss
        best_point[better], best_loss[better], best_gradient[better] = point[better], loss[better], gradient[better]
        since_check += 1
        if step in checkpoints:
            halve = (rises < rho * since_check) | (~halved_last & (best_loss <= best_at_check))
            step_size[halve] /= 2
            # Back to the best point; its momentum is dropped, it pointed away from where the loss was highest.
            point[halve], previous[halve] = best_point[halve], best_point[halve]
            gradient[halve], previous_loss[halve] = best_gradient[halve], best_loss[halve]
            halved_last, best_at_check, since_check = halve, best_loss.clone(), 0
            rises.zero_()
    found = torch.where(fooled.view(-1, 1, 1, 1), fooled_point, best_point)
    return found, fooled, best_loss


def _checkpoints(steps: int) -> set[int]:
    """The steps after which the step size is reviewed: the paper's p_0 = 0, p_1 = 0.22,
    p_(j+1) = p_j + max(p_j - p_(j-1) - 0.03, 0.06), as whole steps (at least one step apart)."""
    stretch, shrink, shortest = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    found, at = set(), stretch
    while at <= steps:
        found.add(at)
        stretch = max(stretch - shrink, shortest)
        at += stretch
    return found


def _lengths(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def _loss_and_gradient(model, point, labels):
    """Each image's cross-entropy, its gradient with respect to the image (never the weights), and which images
    the model gets wrong there."""
    point = point.detach().requires_grad_(True)
    logits = model(point).float()
    loss = F.cross_entropy(logits, labels, reduction="none")
    gradient = input_gradient(loss.sum(), point)
    return loss.detach(), gradient.detach(), logits.detach().argmax(1) != labels
