"""The non-finite guard: a step whose loss or gradient norm is NaN or Inf is skipped, the batch-norm
statistics its forward pass touched are put back, and too many in a row stop the run.

Checked on the host, every step costs one device synchronisation: nothing on a CPU, 8-14% of an H200's
throughput (BENCHMARKS.md). `DeferredGuard` keeps the whole decision on the device instead: the fused
optimizers skip the update themselves when told `found_inf` (the path torch's GradScaler uses), the
statistics are put back with a `where`, and the host reads the counts every `poll_every` steps and at the
end of an epoch. A skipped step changes no weight in either; the deferred one still moves the schedule."""

import logging

import torch
from torch import nn

from imgrec.errors import ImgrecError

log = logging.getLogger("imgrec")


class NonFiniteGuard:
    """`max_bad_steps` None turns it off (and with it the one host synchronisation per step it costs)."""

    deferred = False

    def __init__(self, max_bad_steps: int | None = 3):  # checked by TrainerSettings
        self.max_bad_steps, self.in_a_row, self.skipped = max_bad_steps, 0, 0
        self.snapshot: list[torch.Tensor] | None = None  # batch-norm statistics before the current window

    @property
    def enabled(self) -> bool:
        return self.max_bad_steps is not None

    def begin_window(self, model: nn.Module) -> None:
        """Called before each forward pass; keeps the statistics as they were when the accumulation window began."""
        if self.enabled and self.snapshot is None:
            # every buffer: batch norm's statistics and its num_batches_tracked (the average's weight when momentum=None)
            self.snapshot = [b.detach().clone() for b in model.buffers()]

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
            self.stop(self.in_a_row, f"{loss_text}{norm_text}", saved)
        return False

    def stop(self, in_a_row: int, last: str, saved) -> None:
        kept = (f"{saved} holds the last good epoch" if saved is not None and saved.exists()
                else "no checkpoint had been written yet")
        raise ImgrecError(
            f"{in_a_row} optimizer steps in a row had a non-finite loss or gradient (last: {last}); none of them "
            f"changed the weights, and {kept}. Lower optimizer.lr, set trainer.grad_clip_norm, use "
            "trainer.precision=32, or check the data (trainer.max_bad_steps sets how many are tolerated)"
        )

    def poll(self, where: str, saved=None) -> None:
        """Read what the device counted (DeferredGuard); the host-side guard has nothing pending."""

    def _restore(self, model: nn.Module) -> None:
        if self.snapshot is not None:
            with torch.no_grad():
                for buffer, saved in zip(model.buffers(), self.snapshot):
                    buffer.copy_(saved)


def has_fused_step(optimizer: torch.optim.Optimizer) -> bool:
    """True when every parameter group runs torch's fused kernel, which skips its update on `found_inf`.
    SGD with dampening is left out: its first step differs from the later ones (see zero_momentum)."""
    return getattr(optimizer, "_step_supports_amp_scaling", False) and all(
        group.get("fused") and not group.get("dampening") for group in optimizer.param_groups)


def make_guard(max_bad_steps: int | None, check: str, device: torch.device, optimizer, grad_scaler) -> NonFiniteGuard:
    """trainer.bad_step_check: `auto` defers on CUDA when it can (on a CPU the per-step check costs nothing),
    `every_step` always checks on the host, `deferred` insists."""
    if max_bad_steps is None or check == "every_step":
        return NonFiniteGuard(max_bad_steps)
    can_defer = grad_scaler is None and has_fused_step(optimizer)
    if check == "deferred" and not can_defer:
        why = ("precision=16-mixed's GradScaler checks its own steps" if grad_scaler is not None else
               f"this {type(optimizer).__name__} does not run a fused step (adam, adamw and sgd without dampening can: "
               "add +optimizer.fused=true, which imgrec sets itself on CUDA)")
        raise ImgrecError(f"trainer.bad_step_check=deferred cannot be used: {why}; use trainer.bad_step_check=auto")
    if check == "deferred" or (can_defer and device.type == "cuda"):
        return DeferredGuard(max_bad_steps)
    return NonFiniteGuard(max_bad_steps)


class DeferredGuard(NonFiniteGuard):
    """The same decisions as NonFiniteGuard without a host synchronisation per step. Needs an optimizer
    with a fused step (adam, adamw, sgd; training.optim turns `fused` on for them on CUDA)."""

    deferred = True

    def __init__(self, max_bad_steps: int, poll_every: int = 100):
        super().__init__(max_bad_steps)
        self.poll_every = poll_every
        self.counters: dict[str, torch.Tensor] | None = None  # on the device: bad, in_a_row, worst_in_a_row, skipped
        self.last_bad_loss: torch.Tensor | None = None
        self.steps_since_poll = 0
        self.buffers: list[torch.Tensor] = []  # the model's buffers (batch-norm statistics and counts)
        self.window_open = False

    def begin_window(self, model: nn.Module) -> None:
        if self.window_open:
            return
        if self.snapshot is None:
            self.buffers = list(model.buffers())
            self.snapshot = [b.detach().clone() for b in self.buffers]
        elif self.snapshot:
            torch._foreach_copy_(self.snapshot, [b.detach() for b in self.buffers])  # kept tensors: no allocation
        self.window_open = True

    def end_window(self) -> None:
        self.window_open = False

    def step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor | None, grad_norm: torch.Tensor | None,
             where: str, saved=None) -> None:
        """Step `optimizer` unless the loss or gradient norm is not finite, decided on the device."""
        device = next(iter(optimizer.param_groups[0]["params"])).device
        if self.counters is None:
            zero_momentum(optimizer)
            self.counters = {name: torch.zeros((), dtype=torch.int64, device=device)
                             for name in ("in_a_row", "worst_in_a_row", "skipped")}
            self.last_bad_loss = torch.zeros((), dtype=torch.float32, device=device)
        finite = torch.ones((), dtype=torch.bool, device=device)
        if loss is not None:
            finite = finite & torch.isfinite(loss.detach())
        if grad_norm is not None:
            finite = finite & torch.isfinite(grad_norm)
        bad = ~finite
        counters = self.counters
        counters["in_a_row"].add_(1).mul_(bad)
        torch.maximum(counters["worst_in_a_row"], counters["in_a_row"], out=counters["worst_in_a_row"])
        counters["skipped"].add_(bad)
        if loss is not None:
            torch.where(bad, loss.detach().float(), self.last_bad_loss, out=self.last_bad_loss)
        for buffer, saved_value in zip(self.buffers, self.snapshot or []):
            torch.where(bad, saved_value, buffer, out=buffer)
        optimizer.grad_scale, optimizer.found_inf = None, bad.float()  # what torch's GradScaler hands a fused step
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf
        self.steps_since_poll += 1
        if self.steps_since_poll >= self.poll_every:
            self.poll(where, saved)

    def poll(self, where: str, saved=None) -> None:
        """One synchronisation: warn about the steps skipped since the last poll, stop after too many in a row."""
        if self.counters is None or self.steps_since_poll == 0:
            return
        self.steps_since_poll = 0
        skipped, worst = int(self.counters["skipped"]), int(self.counters["worst_in_a_row"])
        if skipped > self.skipped:
            log.warning(f"{where}: {skipped - self.skipped} optimizer step(s) skipped for a non-finite loss or "
                        f"gradient since the last check (last bad loss {float(self.last_bad_loss)})")
            self.skipped = skipped
        self.in_a_row = int(self.counters["in_a_row"])
        if worst >= self.max_bad_steps:
            self.stop(worst, f"loss {float(self.last_bad_loss)}", saved)


def zero_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Give a fresh SGD its momentum buffers as zeros. The fused kernel creates them uninitialised on the first
    step and fills them in the kernel, which a `found_inf` first step skips: the garbage would move the next step.
    From zero, the first step's buffer is the gradient, as it is without this (dampening 0)."""
    if not isinstance(optimizer, torch.optim.SGD):
        return
    for group in optimizer.param_groups:
        if group.get("momentum"):
            for parameter in group["params"]:
                state = optimizer.state[parameter]
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
