"""Files in and out: the one atomic writer every file of the project goes through, the one opener for
the files it reads, and strict JSON.

`atomic_write` writes to a temporary file in the target's folder, flushes it to disk and renames it
over the target, so a reader, a crash, a full disk or a signal leaves either the old file or the new
one, whole; the temporary file is removed on every failure. `open_input` turns a missing file, a
folder, a permission error or a read error into one `SpinnError` naming the path.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from spinn.errors import SpinnError

#: The longest line a data file may have: SNLI's are under 2 KB, MultiNLI's and 300-d GloVe rows a few
#: KB. A longer one is a damaged or wrong file, refused before it is read into memory whole.
MAX_LINE_BYTES = 1 << 20
#: The suffix of `atomic_write`'s temporary files (``.<name>.<random>.tmp`` next to the target).
TMP_SUFFIX = ".tmp"


class WriteError(SpinnError):
    """A file could not be written (a full disk, no permission, a path through a file); the previous
    version of the file, if any, is intact."""


class _Recording:
    """A file that remembers the OSError of a failed write: torch.save reports one as a RuntimeError
    of its own ("unexpected pos ..."), which says nothing about the disk."""

    def __init__(self, raw: IO[Any]) -> None:
        self.raw = raw
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.raw.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def strerror(err: OSError) -> str:
    """The OS's words for `err` ("No space left on device"), without Python's prefix."""
    return err.strerror or str(err)


@contextmanager
def atomic_write(path: str | Path, *, binary: bool = False, what: str = "the file") -> Iterator[IO[Any]]:
    """Open a temporary file that replaces `path` when the ``with`` block ends without an error.

    Creates the parent folders. On any error or signal inside the block, `path` keeps its old contents
    and the temporary file and the folders made for it are removed. An OSError inside the block counts
    as the file's: a block that also reads other files or the network reports their errors itself.

    Raises:
        WriteError: an OSError while creating, writing, flushing or renaming (also when torch.save
            wraps it in a RuntimeError), naming `path` and `what`; other errors of the block propagate
            unchanged.
    """
    path = Path(path)
    tmp: Path | None = None
    # The folders this write creates, deepest first: a failed write removes them again.
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    done = False
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
            tmp = Path(name)
            os.close(fd)  # reopened by name, which error messages and file.name then show
            raw = open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"}))
        except OSError as err:
            raise _write_error(path, what, err) from None
        f = _Recording(raw)
        try:
            yield f
        except BaseException as err:
            with contextlib.suppress(OSError):  # the buffer's flush fails again on a full disk
                raw.close()
            if isinstance(err, OSError):
                raise _write_error(path, what, err) from None
            if isinstance(err, RuntimeError) and f.error is not None:
                raise _write_error(path, what, f.error) from None
            raise
        try:
            raw.flush()
            os.fsync(raw.fileno())
            raw.close()
            os.replace(tmp, path)
            done = True
        except OSError as err:
            with contextlib.suppress(OSError):
                raw.close()
            raise _write_error(path, what, err) from None
    finally:
        if tmp is not None and not done:
            tmp.unlink(missing_ok=True)
        for folder in created if not done else ():
            with contextlib.suppress(OSError):  # only while empty
                folder.rmdir()


def _write_error(path: Path, what: str, err: OSError) -> WriteError:
    return WriteError(
        f"{path}: cannot write {what} ({strerror(err)}); the previous {path.name}, if any, is intact"
    )


def write_text(path: str | Path, text: str, *, what: str = "the file") -> None:
    """`atomic_write` of a whole text (UTF-8)."""
    with atomic_write(path, what=what) as f:
        f.write(text)


def to_json(obj: Any, *, what: str, indent: int | None = None) -> str:
    """Strict JSON: NaN and infinities, which JSON has no words for, are refused.

    Raises:
        SpinnError: a non-finite number somewhere in `obj`, naming `what`.
    """
    try:
        return json.dumps(obj, indent=indent, allow_nan=False)
    except ValueError:
        raise SpinnError(
            f"{what}: holds a number that is not finite (NaN or infinity), which JSON cannot hold"
        ) from None


def write_json(path: str | Path, obj: Any, *, what: str = "the file") -> None:
    """`obj` as indented strict JSON (`to_json`), written atomically."""
    write_text(path, to_json(obj, what=f"{path}", indent=2) + "\n", what=what)


def remove_stale_temporaries(folder: str | Path) -> None:
    """Delete the temporary files of writes cut short by a SIGKILL or a power cut (the targets are whole)."""
    for tmp in Path(folder).glob(f".*{TMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)


def open_input(path: str | Path, what: str = "file") -> IO[bytes]:
    """Open `path` for reading bytes.

    Raises:
        SpinnError: the path does not exist, is a folder, may not be read, or cannot be opened; the
            message names the path and `what` was expected there.
    """
    path = Path(path)
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise SpinnError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise SpinnError(f"{path}: is a folder, expected a {what}") from None
    except PermissionError:
        raise SpinnError(f"{path}: permission denied, cannot read this {what}") from None
    except OSError as err:
        raise SpinnError(f"{path}: cannot read this {what} ({strerror(err)})") from None


def check_readable(path: str | Path, what: str = "file") -> Path:
    """`path`, after checking that it is a file this process may read (`open_input`'s errors)."""
    open_input(path, what).close()
    return Path(path)


def read_lines(stream: IO[bytes], where: str, first_line: int = 1) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for each line of `stream`, each read in bounded memory.

    Raises:
        SpinnError: a line longer than `MAX_LINE_BYTES`, naming `where` and its line number.
    """
    for line_no, line in enumerate(iter(lambda: stream.readline(MAX_LINE_BYTES + 1), b""), first_line):
        if len(line) > MAX_LINE_BYTES:
            raise SpinnError(
                f"{where}:{line_no}: a line longer than {MAX_LINE_BYTES:,} bytes, expected one record per "
                f"line (is this the right file?)"
            )
        yield line_no, line
