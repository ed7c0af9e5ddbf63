"""Fetch SNLI 1.0, MultiNLI 1.0, the Stanford Sentiment Treebank and GloVe from their official
addresses, check them, unpack them safely.

Each resource is a zip archive. `download` fetches it through a temporary file next to it
(`spinn.io.atomic_write`: removed on any failure, Ctrl-C or SIGTERM) with a progress bar, moves it into
place, checks its checksum, and extracts it into ``root`` after checking every member
(no absolute paths, no ``..``, no symbolic links, nothing that would land outside ``root``). A marker
``<root>/.<name>.done.json`` records the checksum and the extracted files with their sizes; a second
call that finds the marker and the files unchanged does nothing.

Checksums: `RESOURCES` lists the published or widely used values with their source; where none is
known the entry has no checksum and a warning says so, unless the caller supplies one
(``"sha256:<hex>"`` or ``"md5:<hex>"``).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import re
import shutil
import stat
import sys
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from spinn import cli
from spinn.errors import SpinnError
from spinn.io import atomic_write, write_json

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Resource:
    """One downloadable archive; ``checksum`` is ``"<algorithm>:<hex>"`` or None where none is known."""

    url: str
    checksum: str | None
    checksum_source: str | None = None

    @property
    def archive(self) -> str:
        return self.url.rsplit("/", 1)[-1]


RESOURCES: dict[str, Resource] = {
    "snli": Resource(
        "https://nlp.stanford.edu/projects/snli/snli_1.0.zip",
        "sha256:afb3d70a5af5d8de0d9d81e2637e0fb8c22d1235c2749d83125ca43dab0dbd3e",
        "ParlAI tasks/snli/build.py and NLIDatasets.jl (agree)",
    ),
    "multinli": Resource(
        "https://cims.nyu.edu/~sbowman/multinli/multinli_1.0.zip",
        "sha256:049f507b9e36b1fcb756cfd5aeb3b7a0cfcb84bf023793652987f7e7e0957822",
        "ParlAI tasks/multinli/build.py and NLIDatasets.jl (agree)",
    ),
    "glove.840B.300d": Resource(
        "https://nlp.stanford.edu/data/glove.840B.300d.zip",
        "md5:2ffafcc9f9ae46fc8c95f32372976137",
        "InferSent dataset/get_data.bash and several other download scripts (agree)",
    ),
    # Stanford Sentiment Treebank: trees/{train,dev,test}.txt, the splits `spinn.data.classify` reads.
    "sst": Resource(
        "https://nlp.stanford.edu/sentiment/trainDevTestTrees_PTB.zip",
        "sha256:5c613a4f673fc74097d523a2c83f38e0cc462984d847b82c7aaf36b01cbbbfcc",
        "one pinned download script (a table of dataset pins, 789,539 bytes); no second source",
    ),
    "glove.42B.300d": Resource("https://nlp.stanford.edu/data/glove.42B.300d.zip", None),
    "glove.6B": Resource(
        "https://nlp.stanford.edu/data/glove.6B.zip",
        "md5:056ea991adb4740ac6bf1b6d9b50408b",
        "several independent download scripts and dataset registries (agree)",
    ),
}


def download(
    name: str,
    root: str | Path,
    *,
    url: str | None = None,
    base_url: str | None = None,
    checksum: str | None = None,
    keep_archive: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Download and extract resource `name` into `root`; return the extracted files.

    Args:
        name: a key of `RESOURCES`.
        url: fetch from this address instead of the official one (a mirror, or a test server).
        base_url: fetch ``<base_url>/<archive name>`` instead of the official address.
        checksum: ``"sha256:<hex>"`` or ``"md5:<hex>"``; overrides the table.
        keep_archive: keep the zip after extracting it (it is deleted by default to save disk).

    Raises:
        SpinnError: an unknown name, an unreachable address, a checksum mismatch, or an archive with
            a member that would escape `root` (nothing is extracted then).
    """
    if name not in RESOURCES:
        raise SpinnError(f"unknown resource {name!r}, expected one of {', '.join(RESOURCES)}")
    res = RESOURCES[name]
    expected = checksum or res.checksum
    if expected is not None:
        expected = ":".join(_split_checksum(expected))
    source = url or (f"{base_url.rstrip('/')}/{res.archive}" if base_url else res.url)
    root = Path(root)  # created by the first file written into it: a failed download leaves no folder
    marker = root / f".{name}.done.json"
    done = _completed(marker, root, expected)
    if done is not None:
        return done

    archive = root / res.archive
    if not (archive.is_file() and expected is not None and _digest(archive, expected) == expected):
        _fetch_verified(source, archive, expected, name=name, progress=progress)
    files = extract(archive, root)
    write_json(
        marker,
        {"checksum": expected, "files": {str(p.relative_to(root)): p.stat().st_size for p in files}},
        what="the download record",
    )
    if not keep_archive:
        archive.unlink()
    return files


def _fetch_verified(source: str, archive: Path, expected: str | None, *, name: str, progress: bool) -> None:
    """Fetch ``archive`` and check it against ``expected``, or warn that nothing can check it.

    Raises:
        SpinnError: a checksum mismatch; the archive is deleted, and its folder if the fetch made it.
    """
    made_root = not archive.parent.exists()
    _fetch(source, archive, progress)
    if expected is None:
        warnings.warn(
            f"{name}: no known checksum for {archive.name}; it is unverified "
            f"(pass --checksum sha256:<hex>, or checksum= in Python, to check it)",
            stacklevel=3,  # the caller of download
        )
        return
    found = _digest(archive, expected)
    if found != expected:
        archive.unlink()
        if made_root:
            archive.parent.rmdir()
        raise SpinnError(f"{source}: checksum mismatch, expected {expected} but the download has {found}")


def extract(archive: Path, root: Path) -> list[Path]:
    """Extract every file of zip `archive` under `root`, after checking that all of them stay there.

    Raises:
        SpinnError: a member with an absolute path, a ``..`` component, a drive, or a symbolic link;
            or an archive that is not a zip or whose data is truncated or corrupt.
    """
    root_resolved = root.resolve()
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as err:
        raise SpinnError(f"{archive}: not a zip archive ({err})") from None
    with zf:
        members = zf.infolist()
        for info in members:
            name = info.filename
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if (
                name.startswith(("/", "\\"))
                or ".." in parts
                or (parts and ":" in parts[0])
                or stat.S_ISLNK(info.external_attr >> 16)
                or not (root_resolved / name).resolve().is_relative_to(root_resolved)
            ):
                raise SpinnError(
                    f"{archive}: member {name!r} is a link or would be written outside {root}; refusing to "
                    f"extract this archive"
                )
        files = []
        for info in members:
            target = root / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, atomic_write(target, binary=True, what="an extracted file") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
            except (zipfile.BadZipFile, EOFError, zlib.error) as err:
                raise SpinnError(
                    f"{archive}: member {info.filename!r} is truncated or corrupt ({err})"
                ) from None
            files.append(target)
    return files


def _completed(marker: Path, root: Path, expected: str | None) -> list[Path] | None:
    """The extracted files when `marker` says they were extracted from a verified archive and they are
    all still there with their recorded sizes; otherwise None."""
    try:
        record = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or record.get("checksum") != expected:
        return None
    files = [(root / rel, size) for rel, size in record.get("files", {}).items()]
    if not all(p.is_file() and p.stat().st_size == size for p, size in files):
        return None
    return [p for p, _ in files]


def _split_checksum(checksum: str) -> tuple[str, str]:
    algo, _, value = checksum.partition(":")
    digits = {"sha256": 64, "md5": 32}.get(algo)
    if digits is None or not re.fullmatch(f"[0-9a-fA-F]{{{digits}}}", value):
        raise SpinnError(
            f"checksum {checksum!r}: expected 'sha256:<hex>' or 'md5:<hex>' (64 or 32 hex digits)"
        )
    return algo, value.lower()


def _digest(path: Path, like: str) -> str:
    """The checksum of `path`, with the algorithm of `like`, in the same ``algo:hex`` form."""
    algo, _ = _split_checksum(like)
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return f"{algo}:{h.hexdigest()}"


def _fetch(url: str, target: Path, progress: bool) -> None:
    """Download `url` to `target` through a temporary file, so a broken download never looks complete."""
    try:
        with (
            urllib.request.urlopen(url, timeout=60) as response,
            atomic_write(target, binary=True, what="the download") as out,
        ):
            total = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress) as bar:
                while chunk := _read(response, url):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise SpinnError(
                    f"{url}: download failed (connection closed after {received} of {total} bytes)"
                )
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        raise SpinnError(f"{url}: download failed ({err})") from None


def _read(response: http.client.HTTPResponse, url: str) -> bytes:
    """The next chunk; a network error is the download's, not the file's being written."""
    try:
        return response.read(_CHUNK)
    except (OSError, http.client.HTTPException) as err:
        raise SpinnError(f"{url}: download failed ({err})") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Download SNLI 1.0, MultiNLI 1.0 and GloVe into a data folder; running it again skips "
        "what is already extracted and verified.",
        epilog="example: python scripts/download.py snli glove.840B.300d --root data",
    )
    p.add_argument(
        "names",
        nargs="+",
        choices=sorted(RESOURCES),
        metavar="NAME",
        help=f"one or more of {', '.join(RESOURCES)}",
    )
    p.add_argument("--root", default="data", help="folder to extract into (default: data)")
    p.add_argument("--base-url", help="fetch <base-url>/<archive name> instead of the official address")
    p.add_argument("--checksum", help="'sha256:<hex>' or 'md5:<hex>' for a single NAME; overrides the table")
    p.add_argument("--keep-archive", action="store_true", help="keep the zip after extracting it")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run_download(args: argparse.Namespace) -> int:
    if args.checksum and len(args.names) > 1:
        raise SpinnError(f"--checksum applies to one NAME at a time, found {len(args.names)} names")
    for name in args.names:
        files = download(
            name,
            args.root,
            base_url=args.base_url,
            checksum=args.checksum,
            keep_archive=args.keep_archive,
            progress=not args.no_progress,
        )
        print(f"{name}: {len(files)} file(s) in {args.root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), run_download, argv)


if __name__ == "__main__":
    sys.exit(main())
