"""Stop signals: Ctrl-C (SIGINT), kill / preemption (SIGTERM) and SLURM's warning (SIGUSR1) set a flag
that the loop reads at the next optimizer step; the run then saves last.pt and exits 128 + signal."""

import signal
import sys
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
_interrupted_in_startup = False


def remember_ctrl_c_in_startup() -> None:
    """Ctrl-C before training raises KeyboardInterrupt as usual, and is also remembered: some of torch's
    optional imports sit in bare `except:` blocks, and a Ctrl-C landing there was swallowed (3 in 40
    timed tries) and the run went on. `stop_if_ctrl_c_was_swallowed` lets later steps stop it all the same."""
    if threading.current_thread() is not threading.main_thread():
        return

    def on_ctrl_c(signum, frame):
        global _interrupted_in_startup
        _interrupted_in_startup = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_ctrl_c)


def stop_if_ctrl_c_was_swallowed() -> None:
    if _interrupted_in_startup:
        raise KeyboardInterrupt


class TrainingInterrupted(Exception):
    """A stop signal arrived; `checkpoint` (None without a ModelCheckpoint) holds the state to resume from."""

    def __init__(self, signum: int, checkpoint, epoch: int, batch: int):
        self.signum, self.checkpoint, self.epoch, self.batch = signum, checkpoint, epoch, batch
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def catch_stop_signals(trainer) -> dict:
    """Route stop signals to `trainer.stop_signal`; returns the previous handlers (restore_handlers puts
    them back). A second signal while saving only repeats the notice, so the save is never cut short."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # Python delivers signals to the main thread only
    stop_if_ctrl_c_was_swallowed()

    def on_signal(signum, frame):
        name = signal.Signals(signum).name
        if trainer.stop_signal is None:
            sys.stderr.write(f"\n{name} received: saving last.pt at the next step boundary, then stopping\n")
        else:
            sys.stderr.write(f"\n{name} received again: already stopping, wait for the checkpoint to be written\n")
        trainer.stop_signal = signum

    return {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}


def restore_handlers(handlers: dict) -> None:
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
