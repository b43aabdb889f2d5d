"""The real MASt3R and UniMatch sources in ../shared/third_party, put on sys.path for tests.

They are imported as installed packages would be (never copied into the project). Where the
folder is absent the tests that need them are skipped, naming the folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
THIRD_PARTY = PROJECT_ROOT.parent / "shared" / "third_party"


def needs_package(name: str) -> pytest.MarkDecorator:
    """Skip marker for tests of `name` (mast3r or unimatch); puts its source root on sys.path."""
    root = THIRD_PARTY / name
    if not (root / name).is_dir():
        reason = f"{name} sources not found at {root} (../shared/third_party)"
        return pytest.mark.skip(reason=reason)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return pytest.mark.skipif(False, reason="")
