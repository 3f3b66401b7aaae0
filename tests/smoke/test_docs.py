"""The documentation site builds in strict mode: a broken link or a page left out of the navigation fails."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
MKDOCS = Path(sys.executable).parent / "mkdocs"


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    if not MKDOCS.exists():
        pytest.skip("mkdocs is not installed (pip install -e '.[dev]')")
    return subprocess.run([str(MKDOCS), "build", "--strict", "-f", str(root / "mkdocs.yml"), "-d", str(site)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_the_site_builds_strictly(tmp_path):
    done = build(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    pages = {p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("index.html")}
    assert {"index.html", "configuration/index.html", "tasks/classification/index.html", "commands/eval/index.html",
            "checkpoints/index.html", "sweeps/index.html", "distributed/index.html", "development/index.html"} <= pages


@pytest.mark.parametrize("damage", ["broken link", "page left out"])
def test_a_broken_link_or_an_unlisted_page_fails_the_build(tmp_path, damage):
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    if damage == "broken link":
        (copy / "docs" / "index.md").write_text((copy / "docs" / "index.md").read_text() + "\n[gone](no_such_page.md)\n")
    else:
        (copy / "docs" / "orphan.md").write_text("# Not in the navigation\n")
    done = build(copy, tmp_path / "site")
    assert done.returncode != 0
    assert ("no_such_page.md" if damage == "broken link" else "orphan.md") in done.stderr
