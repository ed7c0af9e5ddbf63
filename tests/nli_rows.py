"""Small SNLI-style rows and files for the reader tests."""

import json

P1 = "( ( A dog ) runs )"
P2 = "( The ( dog moves ) )"


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
