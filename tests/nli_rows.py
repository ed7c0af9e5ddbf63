"""Small SNLI-style rows and files, a small GloVe file and its vocabulary for the reader tests, and the
first rows of the embedded sample."""

import gzip
import json
from pathlib import Path

from spinn.data.sample import DEV, GLOVE, SAMPLE_DIR, TRAIN
from spinn.data.vocab import Vocab

P1 = "( ( A dog ) runs )"
P2 = "( The ( dog moves ) )"
LONG = "( ( ( a b ) ( c d ) ) ( e f ) )"  # six words
# Three of the five words of VOCAB have a 3-d vector in GLOVE_3D.
VOCAB = Vocab(["<pad>", "<unk>", "the", "cat", "zebra"])
GLOVE_3D = "the 0.1 0.2 0.3\ncat 1 2 3\ndog 4 5 6\nzebra 7 8 9\n"


def row(label="entailment", s1=P1, s2=P2, pair_id="p1", **extra):
    return {
        "gold_label": label,
        "sentence1_binary_parse": s1,
        "sentence2_binary_parse": s2,
        "pairID": pair_id,
        **extra,
    }


def write_jsonl(path, rows):
    """One line per row: a dict as JSON, a str or bytes as they are (for malformed lines)."""
    lines = (
        r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode() for r in rows
    )
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def first_rows(folder: Path, train: int, dev: int) -> list[str]:
    """Write the first rows of the embedded sample's SNLI train and dev files into folder, uncompressed;
    return the config overrides that train on them with the sample's GloVe rows."""
    for name, source, rows in (("snli_1.0_train_0.01.jsonl", TRAIN, train), ("snli_1.0_dev.jsonl", DEV, dev)):
        with gzip.open(SAMPLE_DIR / source, "rt", encoding="utf-8") as f:
            (folder / name).write_text("".join(next(f) for _ in range(rows)), encoding="utf-8")
    return [
        f"data.data_dir={folder}",
        "data.train=snli_1.0_train_0.01.jsonl",
        "data.dev=snli_1.0_dev.jsonl",
        f"data.cache_dir={folder / 'cache'}",
        f"vocab.glove={SAMPLE_DIR / GLOVE}",
    ]


def corrupt_zip_member(path):
    """Flip bytes of the compressed data of the member glove.txt of the zip archive at path."""
    data = bytearray(path.read_bytes())
    start = data.index(b"glove.txt") + len("glove.txt")  # compressed data follows the local header name
    for i in range(start + 5, start + 25):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
