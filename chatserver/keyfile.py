"""Secrets kept in files beside the database (the cookie secret, the password key, the VAPID key of
SPEC 9): made on first start with mode 0600 and reused after (SPEC 3)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def key_file(path: Path, generate: Callable[[], str], check: Callable[[str], None]) -> str:
    """The key stored in `path`, created with `generate()` on first use with mode 0600 (an
    existing file is tightened to 0600), in a folder made with mode 0700; `check` raises
    ValueError for a stored key that cannot be used."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:  # made by an older release or by hand: owner only
            path.chmod(0o600)
        key = path.read_text().strip()
        check(key)
        return key
    key = generate()
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key
