"""Ctrl-C before training: torch's optional imports sit in bare `except:` blocks, where a KeyboardInterrupt
is swallowed and the run went on (measured: 3 of 40 timed Ctrl-Cs during `import torch`)."""

import signal
from types import SimpleNamespace

import pytest

from imgrec.training import signals


@pytest.fixture
def startup_handler(monkeypatch):
    previous = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(signals, "_interrupted_in_startup", False)
    signals.remember_ctrl_c_in_startup()
    yield
    signal.signal(signal.SIGINT, previous)


def swallowing_import():
    try:  # what a library's optional import does
        signal.raise_signal(signal.SIGINT)
    except:  # noqa: E722
        pass


def test_a_ctrl_c_swallowed_during_startup_still_stops_the_run_before_training(startup_handler):
    swallowing_import()
    with pytest.raises(KeyboardInterrupt):
        signals.catch_stop_signals(SimpleNamespace(stop_signal=None))
    with pytest.raises(KeyboardInterrupt):
        signals.stop_if_ctrl_c_was_swallowed()


def test_without_a_ctrl_c_training_takes_the_stop_signals_over(startup_handler):
    trainer = SimpleNamespace(stop_signal=None)
    handlers = signals.catch_stop_signals(trainer)
    try:
        signal.raise_signal(signal.SIGINT)  # now a stop request, not an exception
        assert trainer.stop_signal == signal.SIGINT
    finally:
        signals.restore_handlers(handlers)
