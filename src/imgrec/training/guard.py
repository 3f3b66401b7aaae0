"""The non-finite guard: a step whose loss or gradient norm is NaN or Inf is skipped, the batch-norm
statistics its forward pass touched are put back, and too many in a row stop the run."""

import logging

import torch
from torch import nn

from imgrec.errors import ImgrecError

log = logging.getLogger("imgrec")


class NonFiniteGuard:
    """`max_bad_steps` None turns it off (and with it the one host synchronisation per step it costs)."""

    def __init__(self, max_bad_steps: int | None = 3):  # checked by TrainerSettings
        self.max_bad_steps, self.in_a_row, self.skipped = max_bad_steps, 0, 0
        self.snapshot: list[torch.Tensor] | None = None  # batch-norm statistics before the current window

    @property
    def enabled(self) -> bool:
        return self.max_bad_steps is not None

    def begin_window(self, model: nn.Module) -> None:
        """Called before each forward pass; keeps the statistics as they were when the accumulation window began."""
        if self.enabled and self.snapshot is None:
            self.snapshot = [b.detach().clone() for b in model.buffers() if b.is_floating_point()]

    def end_window(self) -> None:
        self.snapshot = None

    def check(self, model: nn.Module, loss: torch.Tensor | None, grad_norm: torch.Tensor | None, where: str,
              saved=None) -> bool:
        """True when the step may be taken. `loss` None: judge by the gradient norm alone (DDP, where the
        averaged gradients agree on every process but the losses do not). `saved`: the run's last.pt path,
        named in the error when it exists."""
        if not self.enabled:
            return True
        finite = torch.ones((), dtype=torch.bool)
        if loss is not None:
            finite = finite & torch.isfinite(loss.detach()).cpu()
        if grad_norm is not None:
            finite = finite & torch.isfinite(grad_norm).cpu()
        if bool(finite):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.skipped += 1
        self._restore(model)  # the bad forward pass also fed NaN into the batch-norm statistics
        loss_text = "" if loss is None else f"loss {float(loss.detach())}"
        norm_text = "" if grad_norm is None else f", gradient norm {float(grad_norm)}"
        log.warning(f"{where}: {loss_text}{norm_text}; step skipped")
        if self.in_a_row >= self.max_bad_steps:
            kept = (f"{saved} holds the last good epoch" if saved is not None and saved.exists()
                    else "no checkpoint had been written yet")
            raise ImgrecError(
                f"{self.in_a_row} optimizer steps in a row had a non-finite loss or gradient (last: {loss_text}"
                f"{norm_text}); none of them changed the weights, and {kept}. "
                "Lower optimizer.lr, set trainer.grad_clip_norm, use trainer.precision=32, or check the data "
                "(trainer.max_bad_steps sets how many are tolerated)"
            )
        return False

    def _restore(self, model: nn.Module) -> None:
        if self.snapshot is not None:
            floating = [b for b in model.buffers() if b.is_floating_point()]
            with torch.no_grad():
                for buffer, saved in zip(floating, self.snapshot):
                    buffer.copy_(saved)
