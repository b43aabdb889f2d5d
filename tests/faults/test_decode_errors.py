"""Finding 9: a file that is not a video gets one line naming the user's file (before: a
48-line ffmpeg dump naming a temporary file)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_a_text_file_named_mp4_is_one_line_naming_it(tmp_path):
    video = tmp_path / "holiday.mp4"
    video.write_text("these are my holiday notes, not a video\n")
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "gflow"),
            "run",
            str(video),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert (run.stdout + run.stderr).splitlines() == [
        f"error (INVALID_ARGUMENT): video: cannot decode {video}: not a video file ffmpeg can read"
    ]
