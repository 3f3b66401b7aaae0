"""Adversarial training (`trainer.adversarial`): each training batch, or a share of it, is replaced by
adversarial images made against the current weights, and validation measures accuracy under the same attack.

Madry et al. (2018) train on PGD examples; Wong et al. (2020, "Fast is better than free") showed that one
FGSM step of 1.25 eps from a uniform random start in the eps-ball (`fgsm_rs`) reaches nearly PGD's robustness
at about twice the cost of clean training, where PGD-k costs about k+1 times. The attack runs on [0, 1]
pixels with the normalisation inside (robustness.attacks.PixelModel), so eps means the same for every
`dataset.normalize`, and against the plain module in eval mode: batch-norm statistics are neither used from
the adversarial batch nor updated by the attack's passes, and dropout is off; the training step that follows
sees the adversarial images like any batch.
"""

from dataclasses import dataclass

import torch
from torch import nn

from imgrec.errors import ImgrecError
from imgrec.values import is_number, is_whole

METHODS = ("pgd", "fgsm_rs")
# the tasks whose outputs the attack's loss and val/robust_acc understand: one class per image
TASKS = ("classification",)
METRICS = ("train/adv_loss", "val/robust_acc")
FLOAT16_LOSS_SCALE = 1024.0  # keeps float16 input gradients from underflowing; sign and direction ignore it


@dataclass
class AdversarialSettings:
    method: str = "pgd"  # pgd | fgsm_rs
    eps: float = 0.03137  # [0, 1] pixels (8/255); an L2 length with norm l2
    steps: int = 7  # PGD steps (fgsm_rs takes one)
    step_size: float | None = None  # null: PGD 2.5 eps / steps; fgsm_rs 1.25 eps
    norm: str = "linf"  # linf | l2 (pgd only)
    ratio: float = 1.0  # share of each batch replaced by adversarial images (1: Madry; 0.5: half clean)
    val_steps: int | None = 10  # PGD steps for val/robust_acc each epoch; null: no robust validation

    def __post_init__(self):
        from imgrec.robustness.attacks import check_budget

        if self.method not in METHODS:
            raise ImgrecError(f"trainer.adversarial.method={self.method!r} must be one of {', '.join(METHODS)}")
        if self.method == "fgsm_rs" and self.norm != "linf":
            raise ImgrecError(f"trainer.adversarial.norm={self.norm!r}: fgsm_rs is an L-inf attack; use method=pgd "
                              "for norm=l2")
        check_budget(self.eps, self.norm, self.steps, self.step_size, eps_key="trainer.adversarial.eps",
                     prefix="trainer.adversarial.")
        if not is_number(self.ratio) or not 0 < self.ratio <= 1:
            raise ImgrecError(f"trainer.adversarial.ratio={self.ratio!r} must be in (0, 1]: the share of each batch "
                              "made adversarial (1: all of it)")
        if self.val_steps is not None and not is_whole(self.val_steps, 1):
            raise ImgrecError(f"trainer.adversarial.val_steps={self.val_steps!r} must be a whole number >= 1, or null "
                              "for no robust validation")

    @property
    def metric_names(self) -> list[str]:
        return ["train/adv_loss"] + (["val/robust_acc"] if self.val_steps is not None else [])

    def attack_settings(self, validation: bool = False) -> dict:
        """The pgd() arguments of the training attack, or of the validation attack (PGD at the same eps)."""
        if validation:
            return {"eps": self.eps, "steps": self.val_steps, "norm": self.norm, "random_start": True}
        if self.method == "fgsm_rs":
            step_size = self.step_size or (1.25 * self.eps if self.eps > 0 else None)  # eps 0: no attack at all
            return {"eps": self.eps, "steps": 1, "step_size": step_size, "norm": "linf", "random_start": True}
        return {"eps": self.eps, "steps": self.steps, "step_size": self.step_size, "norm": self.norm,
                "random_start": True}

    def describe(self) -> str:
        if self.method == "fgsm_rs":
            return f"FGSM with random start at eps {self.eps:.4g} (L-inf)"
        return f"PGD-{self.steps} at eps {self.eps:.4g} ({self.norm})"


def check_adversarial(settings: AdversarialSettings, task_name: str) -> None:
    if task_name not in TASKS:
        raise ImgrecError(f"trainer.adversarial is built for classification (one class per image); task={task_name} "
                          "cannot use it: set trainer.adversarial=null")


class AdversarialBatches:
    """Turns a normalised training batch into one whose first `ratio` share is adversarial, and measures
    accuracy under attack on a validation loader."""

    def __init__(self, settings: AdversarialSettings, mean, std, loss_fn, amp_dtype: torch.dtype | None):
        self.settings, self.loss_fn, self.amp_dtype = settings, loss_fn, amp_dtype
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.loss_scale = FLOAT16_LOSS_SCALE if amp_dtype == torch.float16 else 1.0

    def _pixel_model(self, model: nn.Module):
        from imgrec.robustness.attacks import PixelModel

        device = next(model.parameters()).device
        return PixelModel(model, self.mean.flatten(), self.std.flatten()).to(device)

    def _to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        return (images.float() * std + mean).clamp(0, 1)

    def _autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def perturb(self, model: nn.Module, images: torch.Tensor, targets) -> tuple[torch.Tensor, int]:
        """(the batch with its first k images adversarial, k). The random start draws from torch's global
        generator, which checkpoints save: a resumed run makes the same adversarial batches."""
        from imgrec.robustness.attacks import pgd

        count = max(1, round(self.settings.ratio * len(images)))
        pixel_model = self._pixel_model(model)
        pixels = self._to_pixels(images[:count])
        with self._autocast(images.device):
            adversarial = pgd(pixel_model, pixels, targets[:count], loss_fn=self.loss_fn, loss_scale=self.loss_scale,
                              **self.settings.attack_settings())
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        attacked = ((adversarial - mean) / std).to(images.dtype)
        if count == len(images):
            return attacked.contiguous(memory_format=_layout(images)), count
        return torch.cat([attacked, images[count:]]).contiguous(memory_format=_layout(images)), count

    def robust_accuracy(self, model: nn.Module, loader) -> tuple[int, int]:
        """(correct, seen) under the validation PGD on this process's share of `loader`. The random starts come
        from a generator seeded the same each epoch, so the epochs' scores are comparable."""
        from imgrec.robustness.attacks import pgd

        pixel_model = self._pixel_model(model)
        generator = torch.Generator().manual_seed(0)
        correct, seen = 0, 0
        for images, labels in loader:
            pixels = self._to_pixels(images)
            with self._autocast(images.device):
                adversarial = pgd(pixel_model, pixels, labels, generator=generator, loss_scale=self.loss_scale,
                                  **self.settings.attack_settings(validation=True))
                with torch.no_grad():
                    guesses = pixel_model.eval()(adversarial).argmax(1)
            correct += int((guesses == labels).sum())
            seen += len(labels)
        return correct, seen


def _layout(images: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if images.ndim == 4 and images.is_contiguous(memory_format=torch.channels_last) \
        and not images.is_contiguous() else torch.contiguous_format

