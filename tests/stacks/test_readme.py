"""Every Python block of the README runs as written (recipe files are run by test_recipes)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import shmguard as sg

from _readme import Block, blocks  # noqa: E402

SCRIPTS = [b for b in blocks() if b.lang == "python" and b.file is None]


def test_the_readme_has_its_blocks() -> None:
    assert len(SCRIPTS) >= 5
    assert {b.file for b in blocks() if b.file} == {"app.py", "tasks.py", "asgi.py"}
    assert all(b.lang in ("python", "sh") for b in blocks())


@pytest.mark.parametrize("block", SCRIPTS, ids=[f"README.md:{b.line}" for b in SCRIPTS])
def test_python_block_runs_as_written(block: Block, segname: str, tmp_path: object) -> None:
    # the one liberty taken: the example's segment name becomes this test's own
    code = block.text.replace('"buildpool"', repr(segname))
    script = os.path.join(str(tmp_path), "block.py")
    with open(script, "w") as f:
        f.write(code)
    r = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=60,
                       cwd=str(tmp_path), env={**os.environ, "SHMGUARD_SEGMENT": segname})
    assert r.returncode == 0, f"README.md:{block.line}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr
    if "maxtasksperchild" in code:
        assert r.stdout == f"{sum(i * i for i in range(100))} 100\n"
    sg.unlink(segname)


def test_the_sdist_holds_what_the_readme_shows(tmp_path: object) -> None:
    """Every image the README shows is in the sdist (or the README would show nothing)."""
    import re
    import tarfile

    root = os.path.join(os.path.dirname(__file__), "..", "..")
    with open(os.path.join(root, "README.md")) as f:
        images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", f.read())
    assert "bench/results/peers.png" in images
    r = subprocess.run([sys.executable, "-c", "from setuptools import build_meta as b; "
                        f"print(b.build_sdist({str(tmp_path)!r}))"], cwd=root,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    name = r.stdout.strip().splitlines()[-1]
    with tarfile.open(os.path.join(str(tmp_path), name)) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
    assert [i for i in images if i not in members] == []
