"""Problems with files that are not about their content: entries that are not readable plain files (reported per
file), and machine errors (full disk, I/O, permission, too many files), which stop the job with one line and are
never taken as a verdict on the file.
"""

from __future__ import annotations

import errno
import os
import stat

FOLDER = "a folder"

# What the machine, not the file, got wrong: the same file works once the disk has space again, the permissions
# are fixed or fewer files are open.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EMFILE, errno.ENFILE, errno.EACCES,
                                errno.EPERM, errno.EROFS})


def entry_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a readable plain file, as a short phrase (None: it is one)."""
    try:
        info = os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symbolic link loop (the link leads back to itself)"
        if os.path.islink(path):
            return f"broken symbolic link (its target {os.readlink(path)!r} does not exist)"
        if error.errno == errno.ENOENT:
            return "no such file"
        return f"cannot be read ({error.strerror})"
    if stat.S_ISDIR(info.st_mode):
        return FOLDER
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    return None


def is_environment_error(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS


def environment_message(error: OSError, where: str | os.PathLike | None = None) -> str:
    """One line naming the file (``where`` when the error does not name one) and the machine's problem."""
    name = error.filename if error.filename is not None else where
    reason = error.strerror or str(error) or type(error).__name__
    if error.errno == errno.ENOSPC and "space" not in reason.lower():
        reason = f"no space left on the device ({reason})"     # h5py and others word it their own way
    return f"{os.fspath(name)}: {reason}" if name is not None else reason
