"""Files the project writes under its data dir: replaced atomically, with the process's normal
permissions.

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask, and ``os.replace`` keeps
that mode: a report or a stored value written that way is unreadable to the rest of a team sharing
the data dir. Each file is given the mode a plain ``open(path, "w")`` would have (0666 less the
umask) before it replaces the old one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set and restore at once
    os.umask(mask)
    return mask


def replace_file(path: Path, data: bytes | None = None, *, write=None) -> None:
    """Write ``data`` (or call ``write(handle)``) to a temporary file beside ``path``, give it the
    mode a newly created file gets, and rename it over ``path``: a reader never sees half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            if write is not None:
                write(handle)
            else:
                handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["replace_file"]
