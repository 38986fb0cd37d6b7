"""The output side: nothing leakhunt did not create is replaced (devices, named pipes, links), written
files honour the umask, a report that cannot be written is one line and exit 6, and nothing half-written
is left where leakhunt writes files itself.

Real devices, pipes, links and write failures, in processes of their own where the failure is a
process's (a closed stdout, a file-size limit)."""
import json
import os
import resource
import signal
import stat
import subprocess
import sys

import pytest

from pykd_ext.console import EXIT_OUTPUT, EXIT_SUSPECT, EXIT_USAGE, OutputError
from pykd_ext.outfiles import make_folder, open_for_append, refuse_unless_replaceable, write_atomically

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAPSHOT = os.path.join(ROOT, "mocks", "snapshots", "0x76-irp-x64.snap")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def leakhunt(*arguments, stdout=subprocess.PIPE, preexec_fn=None, cwd=ROOT):
    environment = dict(os.environ)
    environment.pop("LEAKHUNT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "pykd_ext"] + list(arguments), cwd=cwd, env=environment,
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120, preexec_fn=preexec_fn)


def one_error_line(text):
    return text.count("\n") == 1 and text.startswith("leakhunt: error: ") and "Traceback" not in text


def snapshot_copy(tmp_path):
    """A dump-like input that --record accepts: a kernel dump written from the bundled case."""
    from mocks.dumpwriter import write_dump
    from mocks.scenarios import case_0x76

    path = str(tmp_path / "MEMORY.DMP")
    write_dump(case_0x76("x64", "irp", noise_pages=1).data, path)
    return path


# ---- never replace what is not ours ----------------------------------------------------------------

@pytest.fixture
def places(tmp_path):
    """A FIFO, a link to a precious file, a folder, and (as root) a character device of our own."""
    made = {}
    fifo = tmp_path / "pipe.snap"
    os.mkfifo(fifo)
    made["a named pipe"] = str(fifo)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    link = tmp_path / "link.snap"
    os.symlink(precious, link)
    made["a symbolic link"] = str(link)
    folder = tmp_path / "folder.snap"
    folder.mkdir()
    made["a directory"] = str(folder)
    if IS_ROOT:
        device = tmp_path / "null.snap"
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the null device's numbers
        made["a device"] = str(device)
    return made


def kinds(places):
    return {path: stat.S_IFMT(os.lstat(path).st_mode) for path in places.values()}


def test_record_with_force_replaces_only_a_regular_file(tmp_path, places):
    dump = snapshot_copy(tmp_path)
    before = kinds(places)
    for what, path in places.items():
        result = leakhunt("analyze", dump, "--record", path, "--force")
        assert result.returncode == EXIT_USAGE and one_error_line(result.stderr), (what, result.stderr)
        assert "--record" in result.stderr and path in result.stderr
    assert kinds(places) == before  # nothing was replaced
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["MEMORY.DMP", "precious.txt"] + [os.path.basename(p) for p in places.values()])  # no temporary file left


def test_writes_refuse_every_kind_that_is_not_a_regular_file(places):
    before = kinds(places)
    for what, path in places.items():
        with pytest.raises(OutputError) as refused:
            write_atomically(path, lambda stream: stream.write(b"x"), overwrite=True)
        assert "\n" not in str(refused.value) and path in str(refused.value)
        with pytest.raises(OutputError):
            open_for_append(path)
    assert kinds(places) == before


def test_a_written_file_gets_the_umask_permissions(tmp_path):
    dump = snapshot_copy(tmp_path)
    for mask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        path = tmp_path / f"case-{mask:o}.snap"
        result = leakhunt("analyze", dump, "--record", str(path), preexec_fn=lambda mask=mask: os.umask(mask))
        assert result.returncode == EXIT_SUSPECT, result.stderr
        assert stat.S_IMODE(os.stat(path).st_mode) == mode


def test_force_replaces_a_regular_file_whole(tmp_path):
    dump = snapshot_copy(tmp_path)
    path = tmp_path / "case.snap"
    path.write_bytes(b"an older recording")
    refused = leakhunt("analyze", dump, "--record", str(path))
    assert refused.returncode == EXIT_USAGE and "already exists" in refused.stderr
    assert path.read_bytes() == b"an older recording"
    assert leakhunt("analyze", dump, "--record", str(path), "--force").returncode == EXIT_SUSPECT
    assert leakhunt("replay", str(path)).returncode == EXIT_SUSPECT


def test_the_triage_folder_is_not_written_through_links_or_over_pipes(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    os.symlink(SNAPSHOT, inputs / "case.snap")
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not leakhunt's")
    for name, make in (("summary.json", lambda p: os.symlink(elsewhere, p)), ("results.jsonl", os.mkfifo),
                       ("reports", lambda p: os.symlink(tmp_path, p))):
        out = tmp_path / f"out-{name}"
        out.mkdir()
        make(str(out / name))
        kind = stat.S_IFMT(os.lstat(out / name).st_mode)
        result = subprocess.run([sys.executable, "-m", "pykd_ext", "triage", str(inputs), "--out", str(out)], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode in (EXIT_USAGE, EXIT_OUTPUT), (name, result.stderr)
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert stat.S_IFMT(os.lstat(out / name).st_mode) == kind, name  # still what it was
    assert elsewhere.read_text() == "not leakhunt's"


def test_a_named_out_folder_may_be_a_link_the_user_gave(tmp_path):
    real = tmp_path / "real-out"
    real.mkdir()
    os.symlink(real, tmp_path / "out")
    result = subprocess.run([sys.executable, "-m", "pykd_ext", "triage", SNAPSHOT, "--out", str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (real / "results.jsonl").is_file() and (real / "report.html").is_file()


def test_a_folder_in_the_way_of_a_file_is_refused(tmp_path):
    file_in_the_way = tmp_path / "reports"
    file_in_the_way.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        make_folder(str(file_in_the_way))
    with pytest.raises(OutputError, match="already exists"):
        refuse_unless_replaceable(str(file_in_the_way), overwrite=False)


def test_a_device_in_the_way_of_a_folder_is_named_once():
    with pytest.raises(OutputError) as raised:
        make_folder(os.devnull)
    assert str(raised.value) == f"{os.devnull} is a device, not a folder"


# ---- output errors are not bugs --------------------------------------------------------------------------

def test_a_full_disk_on_stdout_is_one_line_and_exit_6():
    with open("/dev/full", "w") as full:
        result = leakhunt("replay", SNAPSHOT, stdout=full)
    assert result.returncode == EXIT_OUTPUT and one_error_line(result.stderr)
    assert "no space left on device" in result.stderr and "bug" not in result.stderr


@pytest.mark.parametrize("arguments", [["replay", SNAPSHOT], ["replay", SNAPSHOT, "--format", "json"],
                                       ["inspect", SNAPSHOT], ["--version"]])
def test_a_closed_stdout_is_one_line_and_exit_6(arguments):
    result = subprocess.run([sys.executable, "-c", "import os, sys, runpy; os.close(1); sys.argv = ['leakhunt'] + "
                             f"{arguments!r}; runpy.run_module('pykd_ext', run_name='__main__')"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_OUTPUT and one_error_line(result.stderr), result.stderr
    assert "closed" in result.stderr


def test_stdout_and_stderr_both_closed_still_exit_6():
    result = subprocess.run([sys.executable, "-c", "import os, sys, runpy; os.close(1); os.close(2); "
                             f"sys.argv = ['leakhunt', 'replay', {SNAPSHOT!r}]; "
                             "runpy.run_module('pykd_ext', run_name='__main__')"], cwd=ROOT, timeout=120)
    assert result.returncode == EXIT_OUTPUT


def test_a_reader_that_stops_early_is_not_an_error():
    process = subprocess.Popen([sys.executable, "-m", "pykd_ext", "replay", SNAPSHOT, "-v"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.readline()
    process.stdout.close()  # like `| head -1`
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0 and err == b""


def _file_size_limit(limit):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_a_recording_that_cannot_be_written_whole_leaves_nothing(tmp_path):
    dump = snapshot_copy(tmp_path)
    path = tmp_path / "case.snap"
    result = leakhunt("analyze", dump, "--record", str(path), "--format", "json", preexec_fn=_file_size_limit(512))
    assert result.returncode == EXIT_OUTPUT and one_error_line(result.stderr), result.stderr
    assert "cannot write snapshot" in result.stderr and "file too large" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["MEMORY.DMP"]  # no partial snapshot, no temporary file


def test_triage_results_that_cannot_be_written_are_one_line_and_exit_6(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "pykd_ext", "triage", SNAPSHOT, "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, preexec_fn=_file_size_limit(3000))
    assert result.returncode == EXIT_OUTPUT, result.stderr
    assert one_error_line(result.stderr) and "file too large" in result.stderr
    leftovers = [name for _, _, names in os.walk(out) for name in names if name.startswith(".leakhunt-")]
    assert leftovers == []  # every file is whole or absent
    for directory, _, names in os.walk(out):
        for name in names:
            if name.endswith(".json"):
                with open(os.path.join(directory, name), encoding="utf-8") as handle:
                    json.load(handle)  # what was written is whole


# ---- Ctrl+C while Python loads leakhunt ------------------------------------------------------------------

INTERRUPTED_IMPORT = """
import sys
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "pykd_ext.cli":
            raise KeyboardInterrupt
sys.meta_path.insert(0, CtrlC())
import runpy
sys.argv = ["leakhunt", "replay", sys.argv[1]]
runpy.run_module("pykd_ext", run_name="__main__")
"""


def test_ctrl_c_while_the_command_module_loads_is_one_line_and_130():
    result = subprocess.run([sys.executable, "-c", INTERRUPTED_IMPORT, SNAPSHOT], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 130 and result.stderr == "leakhunt: interrupted\n" and result.stdout == ""


def test_the_installed_command_starts_at_the_interrupt_safe_entry():
    import configparser

    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    assert config["options.entry_points"]["console_scripts"].strip() == "leakhunt = pykd_ext.launch:main"


def test_a_socket_whose_reader_went_away_is_an_output_error():
    """A broken pipe on a socket is a reader that went away before the end (a pipe's is `| head`)."""
    import socket

    ours, theirs = socket.socketpair()
    theirs.close()
    with ours:
        result = leakhunt("replay", SNAPSHOT, "-v", stdout=ours.fileno())
    assert result.returncode == EXIT_OUTPUT and one_error_line(result.stderr), result.stderr
    assert "went away" in result.stderr
