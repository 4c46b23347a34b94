"""Writing output files: the one atomic-write helper, and the check that an output can be written.

Every file deepcomp writes (.dcz, model files, state_dicts, ONNX models, `run -o` arrays) goes through
:func:`atomic_write`: the bytes go to a hidden temporary file beside the target, which is renamed into
place once complete, so an interrupted or failed write never leaves a partial file at the target. The
temporary's name carries the writer's process id (``.NAME.PID.XXXX.tmp``); a writer that was killed
(SIGKILL, power loss) cannot remove its own, so the next write to the same path removes temporaries of
that path whose process is gone.

Standard library only: the deploy side uses it too.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from deepcomp.errors import DeepcompError


def _write_error(path: Path, e: OSError) -> DeepcompError:
    """A one-line error for an OSError while writing ``path`` that says what to do."""
    where = str(path)
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        return DeepcompError(f"cannot write {where!r}: no space left on the device; free some space or write "
                             "elsewhere (-o)")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return DeepcompError(f"cannot write {where!r}: permission denied; choose a writable location (-o)")
    return DeepcompError(f"cannot write {where!r}: {e.strerror or e}; choose another output (-o)")


def check_output(path: str | os.PathLike) -> Path:
    """Fail now, before any work, if ``path`` cannot become an output file: it is a directory, its
    directory is missing, or that directory is not writable. Returns the path."""
    if str(path).endswith(("/", os.sep)):  # Path() would drop the slash and write a file of that name
        raise DeepcompError(f"output {str(path)!r} names a directory; give a file name (-o DIR/NAME)")
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise DeepcompError(f"output {str(path)!r} is a directory; give a file name inside it (-o DIR/NAME)")
    if not directory.is_dir():
        raise DeepcompError(f"cannot write {str(path)!r}: directory {str(directory)!r} does not exist; create it "
                            "first or choose another output (-o)")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DeepcompError(f"cannot write {str(path)!r}: directory {str(directory)!r} is not writable; choose a "
                            "writable location (-o)")
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``path`` left by writers that no longer run. Returns what was removed."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    prefix = f".{path.name}."
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                os.unlink(directory / name)
                removed.append(directory / name)
            except OSError:
                pass
    return removed


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place. Any OSError (disk
    full, permission) becomes a one-line DeepcompError, and the temporary is removed."""
    path = check_output(path)
    remove_stale_temporaries(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise _write_error(path, e) from None
        raise
