"""The user's cache folder and crash-safe file writes.

Everything a user accumulates (compiled kernels now, tuning logs later) lives under one folder:
`$DWCONV_TVM_CACHE`, else `$XDG_CACHE_HOME/dwconv-tvm`, else `~/.cache/dwconv-tvm`. Files are
written to a temporary name in the same folder and renamed into place, so a crash, an interrupt
or a concurrent writer leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

CACHE_ENV = "DWCONV_TVM_CACHE"


def cache_root() -> Path:
    """The user cache folder (not created here)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dwconv-tvm"


def writable_folder(folder: Path, message: str) -> Path:
    """`folder`, created if needed, checked to take new files; else a ValueError of `message`.

    Commands check where their results go before the minutes of work that make them.

    Raises:
        ValueError: `message` plus the system's reason, if the folder cannot be created or
            written (a read-only folder passes the creation).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise ValueError(f"{message} ({err})") from None
    return folder


@contextlib.contextmanager
def _temporary_beside(path: Path, suffix: str) -> Iterator[Path]:
    """A temporary path in `path`'s folder; removed unless the caller renamed it away."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        # The real suffix last: writers such as export_library choose their format by it.
        tmp = path.parent / f".{path.stem}.{secrets.token_hex(6)}.tmp{suffix}"
        try:
            # Created as a plain `open` would create the file (0o666 less the umask), not
            # mkstemp's owner-only 0o600: an exported library, its sidecar and shared tuning
            # logs must stay readable by the service or teammate that uses them.
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield Path(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write(path: Path, write: Callable[[Path], None], suffix: str = "") -> None:
    """Calls `write(tmp)` on a temporary file beside `path`, then renames it onto `path`.

    Args:
        path: The final location.
        write: Writes the complete content to the given temporary path.
        suffix: Suffix of the temporary file (some writers, e.g. TVM's `export_library`,
            choose their output format by extension).
    """
    path = Path(path)
    with _temporary_beside(path, suffix) as tmp:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)


def atomic_write_json(path: Path, data: dict) -> None:
    """Writes `data` as JSON to `path` atomically."""
    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True)))


def read_json(path: Path) -> dict | None:
    """The JSON object at `path`, or None if it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
