"""What the sandbox's tests share."""
from __future__ import annotations

import glob


def marked_processes(marker: bytes) -> list[int]:
    """Processes whose command line holds `marker` (a check's processes carry their evaluator's)."""
    found = []
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(cmdline, "rb") as f:
                if marker in f.read():
                    found.append(int(cmdline.split("/")[2]))
        except OSError:
            continue
    return found
