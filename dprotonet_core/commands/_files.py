"""Reading an image file named on the command line: a regular file of at most the upload limit, checked before a
byte is read (a FIFO, a device such as /dev/zero, a folder or an oversized file is refused with one line)."""

from __future__ import annotations

import os
import stat

from dprotonet_core.review.settings import MAX_UPLOAD_MB

MAX_FILE_BYTES = MAX_UPLOAD_MB * 1024 * 1024  # the app's upload limit: the largest image the reader accepts


class FileRefused(Exception):
    """The file cannot be read as an image file; the message is one line."""


def read_image_file(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of `path`. Opened without blocking (a FIFO would otherwise wait for a writer forever), then checked
    on the open descriptor, so a path swapped after a check cannot slip through: a regular file, at most
    `max_bytes`; reading stops one byte past the limit."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise FileRefused(f"cannot open the file ({exc.strerror or exc}).") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            what = ("a folder" if stat.S_ISDIR(info.st_mode) else "a pipe" if stat.S_ISFIFO(info.st_mode)
                    else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "not a file")
            raise FileRefused(f"not a regular file ({what}); only image files are read.")
        if info.st_size > max_bytes:
            raise FileRefused(f"the file is larger than {max_bytes // (1024 * 1024)} MB; not read.")
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:
            raise FileRefused(f"the file is larger than {max_bytes // (1024 * 1024)} MB; not read.")
        return b"".join(chunks)
    except OSError as exc:
        raise FileRefused(f"cannot read the file ({exc.strerror or exc}).") from None
    finally:
        os.close(fd)
