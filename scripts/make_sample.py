"""Cut the embedded sample (spinn/data/sample/) from the official SNLI 1.0 and GloVe 6B files.

    python scripts/make_sample.py --source ../shared/data

Deterministic: the same sources give byte-identical files (gzip without a name or a time stamp).
Reads, under --source, the files named in SOURCES (their md5s are checked first):

* every row of ``snli_1.0/snli_1.0_train_0.01.jsonl`` (a random 1% of ``snli_1.0_train.jsonl``),
* the first `DEV_ROWS` rows of ``snli_1.0/snli_1.0_dev.jsonl`` (the official dev file),
* the rows of ``glove/glove.6B.50d.subset.txt`` (rows of the official ``glove.6B.50d.txt``, unchanged)
  whose word is in the lower-cased vocabulary of those SNLI rows, as `spinn.data.snli.read_nli` reads
  them, in the GloVe file's order.

SNLI rows keep the official field names and values in the official order; the full constituency
parses (``sentence1_parse``, ``sentence2_parse``) are left out: the readers use the binary parses.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
from pathlib import Path

from spinn.data.sample import DEV, GLOVE, SAMPLE_DIR, TRAIN
from spinn.data.snli import read_nli

TRAIN_SOURCE = "snli_1.0/snli_1.0_train_0.01.jsonl"
DEV_SOURCE = "snli_1.0/snli_1.0_dev.jsonl"
GLOVE_SOURCE = "glove/glove.6B.50d.subset.txt"
#: md5 of each source file as this script was last run on it.
SOURCES = {
    TRAIN_SOURCE: "2ba4b023c5b8ef58668ae5a0b1275290",
    DEV_SOURCE: "b23798a0751d9a3dccac16a232496ca5",
    GLOVE_SOURCE: "ee9abe3874283683be8496cb36ab2c31",
}
DEV_ROWS = 2000
DROPPED_FIELDS = ("sentence1_parse", "sentence2_parse")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def snli_lines(source: bytes, rows: int | None) -> bytes:
    """The first `rows` rows (all when None), each without `DROPPED_FIELDS`, one JSON object a line."""
    lines = source.decode("utf-8").splitlines()[:rows]
    out = []
    for line in lines:
        row = {k: v for k, v in json.loads(line).items() if k not in DROPPED_FIELDS}
        out.append(json.dumps(row) + "\n")
    return "".join(out).encode("utf-8")


def glove_lines(source: bytes, vocabulary: set[str]) -> bytes:
    """The rows of a GloVe text file whose word is in `vocabulary`, unchanged and in order."""
    keep = {w.encode("utf-8") for w in vocabulary}
    return b"".join(line for line in io.BytesIO(source) if line.split(b" ", 1)[0] in keep)


def gzipped(data: bytes) -> bytes:
    """gzip at level 9 with no file name and time stamp 0, so equal data gives equal bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buffer, mtime=0) as f:
        f.write(data)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="the folder holding snli_1.0/ and glove/")
    parser.add_argument("--out", default=str(SAMPLE_DIR), help=f"where to write (default {SAMPLE_DIR})")
    args = parser.parse_args(argv)
    source, out = Path(args.source), Path(args.out)
    data = {}
    for name, expected in SOURCES.items():
        data[name] = (source / name).read_bytes()
        if md5(data[name]) != expected:
            print(f"{source / name}: md5 {md5(data[name])}, expected {expected}", file=sys.stderr)
            return 1
    texts = {
        TRAIN: snli_lines(data[TRAIN_SOURCE], None),
        DEV: snli_lines(data[DEV_SOURCE], DEV_ROWS),
    }
    out.mkdir(parents=True, exist_ok=True)
    vocabulary: set[str] = set()
    for name, text in texts.items():
        (out / name).write_bytes(gzipped(text))
        for ex in read_nli(out / name, lowercase=True, progress=False).examples:
            vocabulary.update(ex.premise, ex.hypothesis)
    texts[GLOVE] = glove_lines(data[GLOVE_SOURCE], vocabulary)
    (out / GLOVE).write_bytes(gzipped(texts[GLOVE]))
    for name, text in texts.items():
        size, rows = (out / name).stat().st_size, text.count(b"\n")
        print(f"{out / name}: {size:,} bytes, {rows:,} rows, uncompressed md5 {md5(text)}")
    print(f"vocabulary: {len(vocabulary):,} words")
    return 0


if __name__ == "__main__":
    sys.exit(main())
