"""Writing files so that nobody ever finds a partial or silently wrong one.

Every file the program writes goes to a temporary name in its destination folder, is
verified by the caller (read back and compared), flushed to disk, given the permissions
the user's umask asks for, and only then renamed over the destination.
"""
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


class WriteError(ValueError):
    """A file could not be written correctly; the message names it and the remedy."""


def current_umask() -> int:
    """The process's file-creation mask (read without changing it where Linux allows)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable_folder(folder: Path) -> None:
    """Proves that files can be made in ``folder`` (or, where it does not exist yet, in its
    nearest existing parent, where it would be created) without leaving anything behind;
    :class:`WriteError` says why not, before any long work starts."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "not a folder")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise WriteError(f"{folder}: cannot write there ({error.strerror or error} at "
                         f"{existing}); choose a writable folder") from None


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` for the caller to write and verify; then
    fsyncs it, sets permissions from the umask and renames it to ``path``. On any error
    the temporary file is removed and :class:`WriteError` names ``path``."""
    path = Path(path)
    suffix = "".join(path.suffixes) or ".tmp"
    try:
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except OSError as error:
        raise WriteError(f"{path.parent}: cannot write there ({error.strerror or error}); "
                         "choose a writable folder") from None
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    except OSError as error:
        raise WriteError(f"{path}: could not be written ({error.strerror or error}); check the "
                         "free disk space and the folder's permissions") from None
    finally:
        if temporary.exists():
            temporary.unlink()


def write_text(path: Path, text: str) -> Path:
    """Writes UTF-8 ``text`` atomically, read back and compared before the rename."""
    path = Path(path)
    with atomic_write(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
        if temporary.read_text(encoding="utf-8") != text:
            raise WriteError(f"{path}: the file did not read back as written (disk full?); "
                             "nothing was kept")
    return path


PNG_END = b"IEND\xaeB`\x82"


def write_png(figure, path: Path, dpi: int) -> Path:
    """Saves a matplotlib ``figure`` as a PNG atomically; the file must end with the PNG
    end chunk before the rename (a full disk leaves no half picture)."""
    path = Path(path)
    with atomic_write(path) as temporary:
        figure.savefig(temporary, dpi=dpi, format="png")
        with open(temporary, "rb") as stream:
            stream.seek(max(0, temporary.stat().st_size - len(PNG_END)))
            if stream.read() != PNG_END:
                raise WriteError(f"{path}: the picture was cut short (disk full?); nothing "
                                 "was kept")
    return path
