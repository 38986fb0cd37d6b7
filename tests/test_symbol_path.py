"""The symbol path: parsing, local stores and folders, and downloads from a symbol server on 127.0.0.1."""
from __future__ import annotations

import http.server
import os
import re
import shutil
import signal
import stat
import sys
import threading
from pathlib import Path

import pytest

from pykd_ext.symbols.base import PdbIdentity
from pykd_ext.symbols.files import MSF_7_MAGIC
from pykd_ext.symbols.path import (MICROSOFT_SYMBOL_SERVER, LocalFolder, SymbolPath, SymbolServer,
                                   SymbolServerStores, default_downstream_store)

KERNEL = PdbIdentity("ntkrnlmp.pdb", "5278AFF86C341677D7D7835C85B7B844", 1)
REAL_SYMBOLS = Path(__file__).parent / "data" / "symbols"
REAL_ISF = REAL_SYMBOLS / "windows" / "ntkrnlmp.pdb" / "5278AFF86C341677D7D7835C85B7B844-1.json.xz"
PDB_BYTES = MSF_7_MAGIC + bytes(range(256)) * 64  # what a server answers: an MSF 7.0 file
TRICKLED_BYTES = 200  # a trickling server sends these one by one, 50 ms apart, then hangs up


def store_file(root: Path, identity=KERNEL, content=PDB_BYTES, name=None) -> Path:
    """Put a file in a symbol store laid out as symstore does: <name>/<GUID><AGE>/<name>."""
    name = name or identity.name
    path = root / name / identity.store_key / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def files_under(root: Path):
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


# ---- parsing ------------------------------------------------------------------------------------

def test_parsing_every_element_form():
    parsed = SymbolPath.parse(r" C:\symbols ;;cache*D:\cache;SRV*https://msdl.microsoft.com/download/symbols;"
                              r"srv*E:\store*http://127.0.0.1:8080/sym/;symsrv*symsrv.dll*F:\s*https://h/s;"
                              r"srv*G:\a*H:\b;srv*G:\one*H:\two*https://h/t")
    assert parsed.elements == [
        LocalFolder(r"C:\symbols"),
        LocalFolder(r"D:\cache"),
        SymbolServer((r"D:\cache",), "https://msdl.microsoft.com/download/symbols"),  # the nearest cache*
        SymbolServer((r"E:\store",), "http://127.0.0.1:8080/sym/"),
        SymbolServer((r"F:\s",), "https://h/s"),
        SymbolServerStores((r"G:\a", r"H:\b")),
        SymbolServer((r"G:\one", r"H:\two"), "https://h/t"),
    ]


def test_defaults_for_a_bare_srv_and_cache():
    assert SymbolPath.parse("srv*").elements == [SymbolServer((default_downstream_store(),), MICROSOFT_SYMBOL_SERVER)]
    assert SymbolPath.parse("srv*https://h/s").elements == [SymbolServer((default_downstream_store(),), "https://h/s")]
    assert SymbolPath.parse("cache*;srv*https://h/s").elements == [
        LocalFolder(default_downstream_store()), SymbolServer((default_downstream_store(),), "https://h/s")]
    assert not SymbolPath.parse("") and not SymbolPath.parse(" ; ;") and not SymbolPath.parse(None)


def test_the_default_downstream_store_is_per_user(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    expected = tmp_path / "local" if sys.platform == "win32" else tmp_path
    assert default_downstream_store() == str(expected / "leakhunt" / "sym")


# ---- local folders --------------------------------------------------------------------------------

def test_a_symbol_store_and_a_plain_folder(tmp_path):
    stored = store_file(tmp_path / "store")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "ntkrnlmp.pdb").write_bytes(PDB_BYTES)
    assert SymbolPath.parse(str(tmp_path / "store")).find(KERNEL).path == str(stored)
    assert SymbolPath.parse(str(tmp_path / "plain")).find(KERNEL).path == str(tmp_path / "plain" / "ntkrnlmp.pdb")
    other = PdbIdentity("ntkrnlmp.pdb", KERNEL.guid, 2)  # another age: not this store's file
    assert not SymbolPath.parse(str(tmp_path / "store")).find(other).found


def test_a_store_with_lower_case_names_on_a_case_sensitive_disk(tmp_path):
    upper = PdbIdentity("NTKRNLMP.PDB", KERNEL.guid, 1)
    stored = store_file(tmp_path, identity=upper, name="ntkrnlmp.pdb")
    assert SymbolPath.parse(str(tmp_path)).find(upper).path == str(stored)


def test_file_ptr_path_and_msg(tmp_path):
    elsewhere = tmp_path / "elsewhere.pdb"
    elsewhere.write_bytes(PDB_BYTES)
    pointer = tmp_path / "store" / "ntkrnlmp.pdb" / KERNEL.store_key / "file.ptr"
    pointer.parent.mkdir(parents=True)
    pointer.write_text(f"PATH:{elsewhere}\n")
    assert SymbolPath.parse(str(tmp_path / "store")).find(KERNEL).path == str(elsewhere)
    pointer.write_text("MSG:the file was withdrawn")
    lookup = SymbolPath.parse(str(tmp_path / "store")).find(KERNEL)
    assert not lookup.found and "says: the file was withdrawn" in lookup.warning()
    pointer.write_text(f"PATH:{tmp_path / 'gone.pdb'}")
    assert "which is missing" in SymbolPath.parse(str(tmp_path / "store")).find(KERNEL).warning()


@pytest.mark.parametrize("level", [REAL_SYMBOLS, REAL_SYMBOLS / "windows", REAL_SYMBOLS / "windows" / "ntkrnlmp.pdb"],
                         ids=["symbols", "windows", "ntkrnlmp.pdb"])
def test_a_volatility3_folder_at_any_of_its_levels(level):
    assert SymbolPath.parse(str(level)).find(KERNEL).path == str(REAL_ISF)


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_volatility3_file_suffixes(tmp_path, suffix):
    isf_file = tmp_path / "windows" / "ntkrnlmp.pdb" / f"{KERNEL.guid}-{KERNEL.age}{suffix}"
    isf_file.parent.mkdir(parents=True)
    isf_file.write_bytes(b"{}")
    assert SymbolPath.parse(str(tmp_path)).find(KERNEL).path == str(isf_file)


def test_a_pdb_is_preferred_to_an_isf_in_one_element_and_elements_go_in_order(tmp_path):
    both = tmp_path / "both"
    shutil.copytree(REAL_SYMBOLS, both)
    stored = store_file(both)
    assert SymbolPath.parse(str(both)).find(KERNEL).path == str(stored)
    first = f"{REAL_SYMBOLS};{both}"
    assert SymbolPath.parse(first).find(KERNEL).path == str(REAL_ISF)  # the first element wins, ISF or not


def test_candidates_when_the_identity_is_unknown(tmp_path):
    stored = store_file(tmp_path / "store")
    other = store_file(tmp_path / "store", identity=PdbIdentity("ntkrnlmp.pdb", "0" * 32, 7))
    store_file(tmp_path / "store", identity=PdbIdentity("hal.pdb", "1" * 32, 1))
    found = list(SymbolPath.parse(f"{tmp_path / 'store'};{REAL_SYMBOLS};{REAL_SYMBOLS / 'windows'}")
                 .candidates("ntkrnlmp.pdb"))
    real = sorted(str(path) for path in (REAL_SYMBOLS / "windows" / "ntkrnlmp.pdb").glob("*.json.xz"))
    assert found == sorted([str(other), str(stored)]) + real  # each file once, in element order, no hal.pdb


def test_candidates_skip_other_json_files(tmp_path):
    (tmp_path / "notes.json").write_text("{}")
    named = tmp_path / f"{KERNEL.guid}-1.json.gz"
    named.write_bytes(b"")
    assert list(SymbolPath.parse(str(tmp_path)).candidates("ntkrnlmp.pdb")) == [str(named)]


@pytest.mark.parametrize("name", ["..", "..\\..\\evil.pdb", "../evil.pdb", "c:evil.pdb", ""])
def test_a_pdb_name_that_is_a_path_is_never_looked_up(tmp_path, name):
    store_file(tmp_path / "store")
    path = SymbolPath.parse(f"{tmp_path / 'store'};srv*{tmp_path / 'cache'}*http://127.0.0.1:9/sym")
    lookup = path.find(PdbIdentity(name, KERNEL.guid, 1))
    assert not lookup.found and "not a plain file name" in lookup.warning()
    assert list(path.candidates(name)) == [] and not (tmp_path / "cache").exists()


def test_the_warning_names_the_file_and_every_place(tmp_path):
    lookup = SymbolPath.parse(f"{tmp_path};{tmp_path / 'absent'};srv*{tmp_path / 'cache'}*https://h/s").find(
        KERNEL, offline=True)
    line = lookup.warning()
    assert not lookup.found and "\n" not in line
    assert "ntkrnlmp.pdb" in line and KERNEL.guid in line and "age 1" in line
    assert f"{tmp_path} (missing)" in line and f"{tmp_path / 'absent'} (no such folder)" in line
    assert f"https://h/s/ntkrnlmp.pdb/{KERNEL.store_key}/ntkrnlmp.pdb (not downloaded: offline)" in line


# ---- a symbol server on 127.0.0.1 ----------------------------------------------------------------

class _Server:
    """A symbol server serving ``root`` as a symbol store; ``behaviour`` makes it misbehave."""

    def __init__(self, root: Path, behaviour: str = "serve"):
        self.root, self.behaviour, self.requests = root, behaviour, []
        self.release = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append(self.path)
                file = owner.root / self.path.split("/", 2)[2] if self.path.startswith("/sym/") else None
                if file is None or not file.is_file():
                    self.send_error(404)
                    return
                body = file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if owner.behaviour == "serve":
                    self.wfile.write(body)
                elif owner.behaviour == "stall":
                    self.wfile.write(body[:100])
                    self.wfile.flush()
                    owner.release.wait(10)
                elif owner.behaviour == "trickle":
                    for byte in body[:TRICKLED_BYTES]:
                        if owner.release.wait(0.05):
                            break
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                elif owner.behaviour == "drop":
                    self.wfile.write(body[:100])
                    self.wfile.flush()
                    self.connection.shutdown(2)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/sym"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    servers = []

    def start(behaviour="serve"):
        root = tmp_path / f"served-{len(servers)}"
        store_file(root)
        servers.append(_Server(root, behaviour))
        return servers[-1]
    yield start
    for running in servers:
        running.stop()


def test_a_download_happens_once_then_the_cache_serves_offline(tmp_path, server):
    running = server()
    cache = tmp_path / "cache"
    path = SymbolPath.parse(f"srv*{cache}*{running.url}")
    lookup = path.find(KERNEL)
    expected = cache / "ntkrnlmp.pdb" / KERNEL.store_key / "ntkrnlmp.pdb"
    assert lookup.path == str(expected) and expected.read_bytes() == PDB_BYTES
    assert lookup.downloaded_from == f"{running.url}/ntkrnlmp.pdb/{KERNEL.store_key}/ntkrnlmp.pdb"
    assert running.requests == [f"/sym/ntkrnlmp.pdb/{KERNEL.store_key}/ntkrnlmp.pdb"]
    running.stop()
    again = path.find(KERNEL)  # the server is gone: the cached file is used without the network
    assert again.path == str(expected) and again.downloaded_from == "" and len(running.requests) == 1
    assert files_under(cache) == [f"ntkrnlmp.pdb/{KERNEL.store_key}/ntkrnlmp.pdb"]


def test_a_cache_element_is_the_downstream_store_of_a_bare_server(tmp_path, server):
    running = server()
    cache = tmp_path / "cache"
    lookup = SymbolPath.parse(f"cache*{cache};srv*{running.url}").find(KERNEL)
    assert lookup.path == str(cache / "ntkrnlmp.pdb" / KERNEL.store_key / "ntkrnlmp.pdb")


def test_a_missing_file_is_http_404_and_nothing_is_written(tmp_path, server):
    running = server()
    missing = PdbIdentity("ntkrnlmp.pdb", "F" * 32, 9)
    cache = tmp_path / "cache"
    lookup = SymbolPath.parse(f"srv*{cache}*{running.url}").find(missing)
    assert not lookup.found and f"/ntkrnlmp.pdb/{'F' * 32}9/ntkrnlmp.pdb (HTTP 404)" in lookup.warning()
    assert not cache.exists() or files_under(cache) == []


@pytest.mark.parametrize("behaviour, why", [("stall", "timed out"), ("drop", "connection dropped")])
def test_a_stalling_or_dropping_server_leaves_no_partial_file(tmp_path, server, behaviour, why):
    running = server(behaviour)
    cache = tmp_path / "cache"
    path = SymbolPath.parse(f"srv*{cache}*{running.url}")
    path.timeout = 0.5
    lookup = path.find(KERNEL)
    assert not lookup.found and why in lookup.warning()
    assert files_under(cache) == []


def test_a_server_that_trickles_is_stopped_at_the_deadline(tmp_path, server):
    running = server("trickle")
    cache = tmp_path / "cache"
    path = SymbolPath.parse(f"srv*{cache}*{running.url}")
    path.deadline = 0.5  # each byte comes well within the per-read timeout, the whole never does
    lookup = path.find(KERNEL)
    received = re.search(r"not complete after 0\.5 s \((\d+) bytes received\)", lookup.warning())
    assert not lookup.found and received
    assert int(received.group(1)) < TRICKLED_BYTES  # stopped while bytes were still coming, not at their end
    assert files_under(cache) == []


def test_an_answer_that_is_not_a_pdb_or_too_big_is_refused(tmp_path, server):
    running = server()
    store_file(running.root, content=b"<html>captive portal</html>")
    cache = tmp_path / "cache"
    lookup = SymbolPath.parse(f"srv*{cache}*{running.url}").find(KERNEL)
    assert "not a PDB" in lookup.warning() and files_under(cache) == []
    store_file(running.root, content=b"MSCF" + bytes(100))
    assert "compressed (CAB)" in SymbolPath.parse(f"srv*{cache}*{running.url}").find(KERNEL).warning()
    store_file(running.root)
    capped = SymbolPath.parse(f"srv*{cache}*{running.url}")
    capped.max_bytes = 1000
    assert "cap: refused" in capped.find(KERNEL).warning() and files_under(cache) == []


def test_a_server_that_is_not_there(tmp_path):
    lookup = SymbolPath.parse(f"srv*{tmp_path}*http://127.0.0.1:9/sym").find(KERNEL)  # port 9: discard, closed
    assert not lookup.found and "connection refused" in lookup.warning()


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs SIGALRM")
def test_ctrl_c_during_a_download_leaves_no_partial_file(tmp_path, server):
    running = server("stall")
    cache = tmp_path / "cache"

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            SymbolPath.parse(f"srv*{cache}*{running.url}").find(KERNEL)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert running.requests and files_under(cache) == []


def test_a_download_into_a_folder_that_cannot_be_written(tmp_path, server):
    running = server()
    blocker = tmp_path / "file-not-folder"
    blocker.write_bytes(b"x")
    lookup = SymbolPath.parse(f"srv*{blocker}*{running.url}").find(KERNEL)
    assert not lookup.found and "cannot create the symbol cache folder" in lookup.warning()
    assert os.path.isfile(blocker)


@pytest.mark.parametrize("kind", ["fifo", "link"])
def test_a_download_never_replaces_a_pipe_or_a_link_in_the_cache(tmp_path, server, kind):
    running = server()
    cache = tmp_path / "cache"
    destination = cache / KERNEL.name / KERNEL.store_key / KERNEL.name
    destination.parent.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not the cache's")
    if kind == "fifo":
        os.mkfifo(destination)
    else:
        os.symlink(tmp_path / "missing-target", destination)  # a dangling link: no file to use, so a download
    lookup = SymbolPath.parse(f"srv*{cache}*{running.url}").find(KERNEL)
    assert not lookup.found and str(destination) in lookup.warning()
    # A pipe is something already there (never replaced); a dangling link is refused when the download lands.
    assert ("is there already" if kind == "fifo" else "symbolic link") in lookup.warning()
    assert stat.S_ISFIFO(os.lstat(destination).st_mode) if kind == "fifo" else os.path.islink(destination)
    assert sorted(os.listdir(destination.parent)) == [KERNEL.name]  # no temporary file left
    assert elsewhere.read_text() == "not the cache's"
