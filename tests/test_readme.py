"""Every ```python block of the README runs as written, and so does every ```bash block marked
as run by this file (in order, in one scratch folder that links the repository's .venv and
examples, as a user in a clone would run them)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
SHELL_BLOCKS = [b for b in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
                if b.startswith("# run by tests/test_readme.py")]


def test_readme_has_examples():
    assert len(BLOCKS) >= 2 and len(SHELL_BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {})


def test_readme_shell_examples_run(tmp_path):
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    for block in SHELL_BLOCKS:
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, capture_output=True,
                                text=True, timeout=900, env={**os.environ})
        assert result.returncode == 0, f"{block}\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "dw.so").is_file() and (tmp_path / "dw.json").is_file()
