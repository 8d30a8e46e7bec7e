"""A bad prompt file stops `cliplabel serve` with one line naming the variable, before any model loads (no lifespan
traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(("variable", "text", "expected"), [
    ("CLIPLABEL_TEMPLATES", "a photo\n", "CLIPLABEL_TEMPLATES: "),  # a template without {}
    ("CLIPLABEL_TEMPLATES", "\n", "CLIPLABEL_TEMPLATES: "),  # no templates at all
    ("CLIPLABEL_BACKGROUND_PROMPTS", "\n", "CLIPLABEL_BACKGROUND_PROMPTS: "),  # no prompts at all
])
def test_serve_names_the_bad_prompt_file_in_one_line(tmp_path: Path, variable: str, text: str, expected: str) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPLABEL_", "LABEL_STUDIO_"))}
    # a model that does not exist: the prompt files are read before it would be loaded
    env.update({variable: str(prompts), "CLIPLABEL_DATA_DIR": str(tmp_path / "data"),
                "CLIPLABEL_MODEL": f"local-dir:{tmp_path / 'no-model'}"})
    proc = subprocess.run([sys.executable, "-m", "cliplabel.cli", "serve", "--port", "0"], env=env,
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in lines[0], lines
