"""Publishing files written through temporary names (mkdtemp / NamedTemporaryFile create them
private, 0700 / 0600): give them the permissions an ordinary write would have had."""

import os
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_readable(path: str | os.PathLike) -> None:
    """chmod `path` (and, for a directory, everything under it) as the process umask allows."""
    mask = _umask()
    path = Path(path)
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
