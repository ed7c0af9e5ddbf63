import functools
import hashlib
import http.server
import runpy
import signal
import stat
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
from nli_rows import GLOVE_3D, corrupt_zip_member
from tiny_runs import ROOT

from spinn.data import download as dl
from spinn.errors import SpinnError

FILES = {"snli_1.0/snli_1.0_dev.jsonl": b'{"a": 1}\n' * 100, "snli_1.0/README.txt": b"hello\n"}
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "download.py"


class Server:
    """Serves a folder on 127.0.0.1 (random port) and counts the requests."""

    def __init__(self, folder):
        self.requests = 0
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the http.server name)
                server.requests += 1
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))
        )
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    with zipfile.ZipFile(folder / "snli_1.0.zip", "w") as zf:
        for name, data in FILES.items():
            zf.writestr(name, data)
    server = Server(folder)
    yield server, folder
    server.close()


def sha256(path):
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_download_checks_extracts_and_is_idempotent(served, tmp_path):
    server, folder = served
    checksum = sha256(folder / "snli_1.0.zip")
    root = tmp_path / "data"
    files = dl.download("snli", root, base_url=server.url, checksum=checksum, progress=False)
    assert sorted(str(p.relative_to(root)) for p in files) == sorted(FILES)
    for name, data in FILES.items():
        assert (root / name).read_bytes() == data
    assert not (root / "snli_1.0.zip").exists() and server.requests == 1
    again = dl.download("snli", root, base_url=server.url, checksum=checksum, progress=False)
    assert sorted(again) == sorted(files) and server.requests == 1
    (root / "snli_1.0/README.txt").unlink()  # an incomplete folder is fetched again
    dl.download("snli", root, base_url=server.url, checksum=checksum, progress=False)
    assert (root / "snli_1.0/README.txt").read_bytes() == b"hello\n" and server.requests == 2


def test_a_kept_archive_is_verified_not_fetched_again(served, tmp_path):
    server, folder = served
    checksum = sha256(folder / "snli_1.0.zip")
    root = tmp_path / "data"
    dl.download(
        "snli", root, url=f"{server.url}/snli_1.0.zip", checksum=checksum, keep_archive=True, progress=False
    )
    (root / ".snli.done.json").unlink()
    dl.download("snli", root, base_url=server.url, checksum=checksum, progress=False)
    assert server.requests == 1


def test_checksum_mismatch_extracts_nothing(served, tmp_path):
    server, _ = served
    root = tmp_path / "data"
    with pytest.raises(SpinnError, match="checksum mismatch, expected md5:0+ but the download has md5:"):
        dl.download("snli", root, base_url=server.url, checksum="md5:" + "0" * 32, progress=False)
    assert not root.exists()  # nor the folder it would have made


def test_the_table_checksum_applies_by_default(served, tmp_path):
    # The served archive is not the real SNLI zip, so the published sha256 must reject it.
    server, _ = served
    with pytest.raises(SpinnError, match="expected sha256:afb3d70a"):
        dl.download("snli", tmp_path / "data", base_url=server.url, progress=False)


def test_no_known_checksum_warns(served, tmp_path):
    server, folder = served
    (folder / "glove.42B.300d.zip").write_bytes((folder / "snli_1.0.zip").read_bytes())
    with pytest.warns(UserWarning, match="no known checksum for glove.42B.300d.zip"):
        dl.download("glove.42B.300d", tmp_path / "data", base_url=server.url, progress=False)


def _zip_with(path, name, data=b"x", symlink=False):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok.txt", b"fine")
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, data)


@pytest.mark.parametrize(
    ("member", "symlink"),
    [
        ("../escape.txt", False),
        ("a/../../escape.txt", False),
        ("/abs/escape.txt", False),
        ("C:/escape.txt", False),
        ("link", True),
    ],
)
def test_members_that_escape_are_rejected_before_anything_is_written(tmp_path, member, symlink):
    archive = tmp_path / "evil.zip"
    _zip_with(archive, member, b"/etc/passwd" if symlink else b"x", symlink)
    root = tmp_path / "deep" / "root"
    root.mkdir(parents=True)
    with pytest.raises(SpinnError, match="would be written outside"):
        dl.extract(archive, root)
    assert list(root.iterdir()) == [] and not (tmp_path / "deep" / "escape.txt").exists()


def test_unreachable_address_and_bad_arguments(tmp_path):
    with pytest.raises(SpinnError, match="download failed"):
        dl.download(
            "snli", tmp_path, url="http://127.0.0.1:9/none.zip", checksum="md5:" + "0" * 32, progress=False
        )
    assert not list(tmp_path.glob("*.part"))
    with pytest.raises(SpinnError, match="unknown resource 'snli2'"):
        dl.download("snli2", tmp_path)
    for bad in ("crc:1", "sha256:zz", "md5:" + "0" * 31):  # refused before anything is fetched
        with pytest.raises(
            SpinnError, match=r"expected 'sha256:<hex>' or 'md5:<hex>' \(64 or 32 hex digits\)"
        ):
            dl.download("snli", tmp_path, checksum=bad)


def test_script_reports_errors_with_status_2(served, tmp_path, capsys, monkeypatch):
    server, folder = served
    main = runpy.run_path(str(SCRIPT))["main"]
    args = ["snli", "--root", str(tmp_path / "d"), "--base-url", server.url, "--no-progress"]
    assert main([*args, "--checksum", "md5:" + "1" * 32]) == 2
    assert "error: " in capsys.readouterr().err
    assert main([*args, "--checksum", sha256(folder / "snli_1.0.zip")]) == 0
    assert "snli: 2 file(s)" in capsys.readouterr().out
    assert main(["snli", "multinli", "--checksum", "md5:" + "1" * 32]) == 2
    assert "error: --checksum applies to one NAME at a time, found 2 names" in capsys.readouterr().err
    with pytest.raises(SpinnError, match="expected md5:1111"):  # --debug, as every script has
        main([*args, "--checksum", "md5:" + "1" * 32, "--keep-archive", "--debug"])


def test_sst_archive_unpacks_to_the_trees_the_classify_reader_takes(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    trees = {
        "train": "(3 (2 It) (4 good))\n",
        "dev": "(1 (2 A) (0 mess))\n",
        "test": "(4 (3 Very) (4 good))\n",
    }
    with zipfile.ZipFile(folder / dl.RESOURCES["sst"].archive, "w") as zf:
        for split, text in trees.items():
            zf.writestr(f"trees/{split}.txt", text)
    server = Server(folder)
    try:
        root = tmp_path / "data"
        checksum = sha256(folder / "trainDevTestTrees_PTB.zip")
        files = dl.download("sst", root, base_url=server.url, checksum=checksum, progress=False)
    finally:
        server.close()
    assert sorted(p.relative_to(root).as_posix() for p in files) == [
        f"trees/{s}.txt" for s in ("dev", "test", "train")
    ]
    from spinn.data.classify import read_classify

    assert [ex.label for ex in read_classify(root / "trees" / "test.txt", fmt="sst").examples] == [1]


def test_a_member_through_a_symlinked_folder_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "snli_1.0").symlink_to(outside)
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("snli_1.0/dev.jsonl", b"x")
    with pytest.raises(SpinnError, match="would be written outside"):
        dl.extract(tmp_path / "a.zip", root)
    assert list(outside.iterdir()) == []


def test_a_corrupt_archive_member_is_an_error_and_leaves_no_partial_file(tmp_path):
    path = tmp_path / "g.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("glove.txt", GLOVE_3D * 200)
    corrupt_zip_member(path)
    (tmp_path / "root").mkdir()
    with pytest.raises(SpinnError, match=r"g.zip: member 'glove.txt' is truncated or corrupt"):
        dl.extract(path, tmp_path / "root")
    assert list((tmp_path / "root").iterdir()) == []
    (tmp_path / "half.zip").write_bytes(path.read_bytes()[:100])
    with pytest.raises(SpinnError, match="half.zip: not a zip archive"):
        dl.extract(tmp_path / "half.zip", tmp_path / "root")


def test_a_download_cut_short_is_an_error_and_leaves_nothing(tmp_path):
    class Short(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server name)
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 100)

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Short)
    thread = threading.Thread(target=httpd.handle_request, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/snli_1.0.zip"
    try:
        with pytest.raises(SpinnError, match="download failed"):
            dl.download("snli", tmp_path, url=url, progress=False)
    finally:
        thread.join(5)
        httpd.server_close()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


class _Stalls(http.server.BaseHTTPRequestHandler):
    """Sends 1 MB of a promised 10 MB archive, then waits."""

    def do_GET(self):  # noqa: N802 (the http.server name)
        self.send_response(200)
        self.send_header("Content-Length", str(10 << 20))
        self.end_headers()
        self.wfile.write(b"x" * (1 << 20))
        self.wfile.flush()
        time.sleep(30)

    def log_message(self, *args):
        pass


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_download_leaves_no_partial_file(tmp_path, signum, status):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stalls)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    root = tmp_path / "data"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "download.py"),
        "snli",
        "--root",
        str(root),
        "--no-progress",
    ]
    cmd += ["--base-url", f"http://127.0.0.1:{httpd.server_address[1]}"]
    try:
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size for p in root.glob(".snli_1.0.zip.*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signum)
        assert proc.wait(120) == status  # a niced test on busy cores can take long to stop Python
        assert "Traceback" not in proc.stderr.read()
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert not root.exists()  # no partial file, nor the folder made for it
