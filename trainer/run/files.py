"""Writes that a kill or a full disk cannot leave half done, and a full disk as one line.

atomic_write puts the bytes in a temporary file beside the target, then renames it over the
target (os.replace is atomic within one file system): readers see the old file or the new one,
never a part. A full disk shows up as OSError(ENOSPC) or, from savers written in Rust/C++
(safetensors, torch.save), as their own error with the OS message inside: disk_full() knows both.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path

from trainer.errors import UsageError

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "os error 28")
# torch.save reports a short write only as a failed check in its zip writer ("[enforce fail at
# inline_container.cc:...] unexpected pos"); with this little space left, a full disk is why.
TORCH_WRITER = "inline_container.cc"
NEARLY_FULL_BYTES = 16 * 2**20


class DiskFull(UsageError):
    """The disk holding `path` filled up: one line naming the path (the user frees space, reruns)."""

    def __init__(self, path: str | Path):
        super().__init__(f"no space left on the device holding {path}; free some space there and run the "
                         "same command again")


def atomic_write(path: str | Path, data: str | bytes) -> None:
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # Created as open() creates files (0666 less the umask), not tempfile's 0600.
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as out:
            out.write(payload)
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):  # never made, or already gone
            os.unlink(temporary)
        if isinstance(error, OSError) and disk_full(error, path):
            raise DiskFull(path) from None
        raise


def disk_full(error: BaseException, path: str | Path) -> bool:
    """Whether `error`, raised while writing under `path`, means the disk is full."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(seen) for text in DISK_FULL_TEXTS):
            return True
        seen = seen.__cause__ or seen.__context__
    return TORCH_WRITER in str(error) and free_bytes(path) < NEARLY_FULL_BYTES


def free_bytes(path: str | Path) -> int:
    existing = next((p for p in (Path(path).absolute(), *Path(path).absolute().parents) if p.exists()), Path("/"))
    return shutil.disk_usage(existing).free


@contextlib.contextmanager
def full_disk_is_one_line(path: str | Path):
    """Writes under `path` inside the block (libraries' savers too): a full disk becomes DiskFull."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as error:
        if not disk_full(error, path):
            raise
        raise DiskFull(getattr(error, "filename", None) or path) from None
