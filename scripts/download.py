"""Download SNLI 1.0, MultiNLI 1.0 and GloVe into a data folder.

    python scripts/download.py snli glove.840B.300d --root data
    python scripts/download.py multinli --root data --base-url http://my-mirror/nli

Resources: snli, multinli, glove.840B.300d, glove.42B.300d, glove.6B. Running it again skips what is
already extracted and verified.
"""

from __future__ import annotations

import argparse
import sys

from spinn.data.download import RESOURCES, download
from spinn.errors import SpinnError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="+", choices=sorted(RESOURCES), metavar="NAME", help="what to fetch")
    p.add_argument("--root", default="data", help="folder to extract into (default: data)")
    p.add_argument("--base-url", help="fetch <base-url>/<archive name> instead of the official address")
    p.add_argument("--checksum", help="'sha256:<hex>' or 'md5:<hex>' for a single NAME; overrides the table")
    p.add_argument("--keep-archive", action="store_true", help="keep the zip after extracting it")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.checksum and len(args.names) > 1:
        p.error("--checksum applies to one NAME at a time")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
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
    except SpinnError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
