import gc
import subprocess
import sys

from imgrec.commands.entry import setup_objects_frozen


def test_training_runs_with_setup_frozen_and_the_collector_on_then_everything_is_unfrozen():
    was_enabled = gc.isenabled()
    gc.disable()  # as imgrec-train leaves it during setup
    try:
        with setup_objects_frozen():
            assert gc.isenabled() and gc.get_freeze_count() > 0
        assert gc.get_freeze_count() == 0 and gc.isenabled()
    finally:
        gc.unfreeze()
        (gc.enable if was_enabled else gc.disable)()


def test_the_heap_is_frozen_once_every_other_exit_handler_has_run():
    # an exit handler registered before runs after: it sees the frozen heap, and the process exits cleanly
    code = ("import atexit, gc\n"
            "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0))\n"
            "from imgrec.commands.entry import skip_collection_at_exit\n"
            "skip_collection_at_exit(); skip_collection_at_exit()\n"
            "print('frozen before exit:', gc.get_freeze_count() > 0)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[:2] == ["frozen before exit: False", "frozen at exit: True"]
