"""The package's shape, checked on its source: what import-linter cannot see (reads of the environment, Label
Studio's field names, attribute probing, asserts, module sizes) and the import name itself.

import-linter (`lint-imports`, contracts in pyproject.toml) checks the imports; these tests check the rest of the
rules the README's development section states. Each failure names the file and line.
"""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import cliplabel

PACKAGE = Path(cliplabel.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def _trees() -> list[tuple[str, ast.Module]]:
    return [(_rel(p), ast.parse(p.read_text(), filename=str(p))) for p in SOURCES]


def test_the_import_name_is_cliplabel_not_backend(tmp_path: Path) -> None:
    # Run from an empty folder: the repository's own `backend/` source root must not be what answers.
    code = ("import importlib.util, cliplabel; "
            "print(importlib.util.find_spec('backend') is None, cliplabel.__version__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    missing, version = out.stdout.split()
    assert missing == "True"
    assert version == importlib.metadata.version("cliplabel") == cliplabel.__version__


def test_only_settings_reads_the_environment() -> None:
    readers = []
    for rel, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"):
                if isinstance(node.value, ast.Name) and node.value.id == "os":
                    readers.append(f"{rel}:{node.lineno}")
    assert all(r.startswith("cliplabel/core/settings.py:") for r in readers), readers


# Field names that exist only in Label Studio's JSON (tasks, annotations, predictions, results, webhooks).
LABEL_STUDIO_NAMES = {"from_name", "to_name", "original_width", "original_height", "annotations", "predictions",
                      "was_cancelled", "completed_by", "rectanglelabels_", "image_rotation", "predictions_score"}


def test_only_labelstudio_knows_label_studio_json_names() -> None:
    found = []
    for rel, tree in _trees():
        if rel.startswith("cliplabel/labelstudio/") or rel == "cliplabel/offline/export.py":
            continue  # export.py writes COCO, whose top-level "annotations" is COCO's own name
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in LABEL_STUDIO_NAMES:
                found.append(f"{rel}:{node.lineno} {node.value!r}")
    assert found == []


# Attribute probing allowed on other libraries' objects only, each with the reason.
PROBES_ALLOWED = {
    ("cliplabel/vision/images.py", "is_animated"),  # PIL sets it only on multi-frame formats
    ("cliplabel/model/encoder.py", "logit_scale"),  # open_clip models without a learned temperature lack it
    # open_clip's text towers differ: only a causal, argmax-pooled one may have its padding trimmed
    ("cliplabel/model/encoder.py", "text_pool_type"),
    ("cliplabel/model/encoder.py", "attn_mask"),
    ("cliplabel/store/sqlite_store.py", "conn"),  # threading.local: one SQLite connection per thread
}


def test_no_attribute_probing_on_our_own_types() -> None:
    probes = set()
    for rel, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
                if node.func.id == "getattr" and len(node.args) < 3:
                    continue
                name = node.args[1].value if isinstance(node.args[1], ast.Constant) else "<dynamic>"
                probes.add((rel, str(name)))
    assert probes <= PROBES_ALLOWED, sorted(probes - PROBES_ALLOWED)


def test_no_assert_on_production_paths() -> None:
    asserts = [f"{rel}:{node.lineno}" for rel, tree in _trees() for node in ast.walk(tree) if isinstance(node, ast.Assert)]
    assert asserts == []


@pytest.mark.parametrize("path", [p for p in SOURCES if "services" in p.parts], ids=_rel)
def test_service_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= 320, f"{_rel(path)} has {lines} lines; split it by responsibility"
