"""Hydra's shell completion through imgrec's console scripts (README: "Shell completion")."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def complete(command: str, line: str, tmp_path: Path) -> list[str]:
    """What bash would offer after `line`: the installed script's answer to Hydra's completion query."""
    env = {**os.environ, "COMP_LINE": line, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([str(BIN / command), "-sc", "query=bash"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_completion_offers_a_group_s_files_and_a_group_s_keys(tmp_path):
    assert {"optimizer=adam", "optimizer=sgd", "optimizer=nesterov"} <= set(
        complete("imgrec-train", "imgrec-train optimizer=", tmp_path))
    assert set(complete("imgrec-train", "imgrec-train trainer.max_", tmp_path)) == {"trainer.max_bad_steps=",
                                                                                   "trainer.max_epochs="}
    script = subprocess.run([str(BIN / "imgrec-train"), "--shell-completion", "install=bash"], capture_output=True,
                            text=True, timeout=120)
    assert script.returncode == 0 and "complete -o nospace -o default -F hydra_bash_completion imgrec-train" in script.stdout
