"""What a checkpoint holds of a Trainer, and putting it back: the state an exact resume needs."""

import logging

from imgrec.errors import ImgrecError
from imgrec.training.seeding import rng_state, set_rng_state

log = logging.getLogger("imgrec")


class TrainerState:
    """Mixed into Trainer: checkpoint_state() and load_state_dict(), including where in an epoch it stopped."""

    def checkpoint_state(self) -> dict:
        """Everything an exact resume needs, plus what evaluation needs to rebuild the model."""
        ema = {} if self.ema is None else {"train_model": self.model.state_dict(), "ema_updates": self.ema.n_averaged}
        return {
            "model": self.eval_model.state_dict(),  # the weights to evaluate and ship
            **ema,  # with EMA on, the raw weights that training continues from
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "callbacks": {name: callback.state_dict() for name, callback in self.callbacks.items()},
            "rng": rng_state(),
            **({} if self.scaler is None else {"grad_scaler": self.scaler.state_dict()}),
            **self._progress_state(),
            "world_size": self.dist.world_size,
            **self.checkpoint_extras,
        }

    def _progress_state(self) -> dict:
        """Where in the epoch an interrupted run stopped: batches done and the running training sums."""
        if not self.batch_in_epoch:
            return {}
        loss_sum, correct, seen = self._epoch_sums
        return {"epoch_progress": {"batches": self.batch_in_epoch, "seen": seen, "sums": {
            "loss_sum": loss_sum.detach().cpu(), "correct": correct.detach().cpu()}}}

    def load_state_dict(self, state: dict) -> None:
        try:
            if self.ema is not None:
                self.model.load_state_dict(state["train_model"])
                self.ema.module.load_state_dict(state["model"])
                self.ema.n_averaged.copy_(state["ema_updates"])
            else:
                self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise ImgrecError(
                f"the checkpoint's model/optimizer do not fit this configuration: {str(error).splitlines()[0]}. "
                "Resume with the same model and optimizer settings the checkpoint was trained with."
            ) from error
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.resume_progress = state.get("epoch_progress")  # train_epoch continues from that batch
        if self.resume_progress is not None and state.get("world_size", 1) != self.dist.world_size:
            log.warning(f"the checkpoint stopped mid-epoch with {state.get('world_size', 1)} process(es) and this run "
                        f"has {self.dist.world_size}: epoch {self.epoch + 1} restarts from its first batch")
            self.resume_progress = None
        for name, callback in self.callbacks.items():
            if name in state["callbacks"]:
                callback.load_state_dict(state["callbacks"][name])
        set_rng_state(state["rng"])
