"""The fuzz targets run (briefly here; ``--runs 2000`` in CI, longer on demand) and can fail."""
import os
import subprocess
import sys

import pytest

from fuzz import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("target", ["fuzz_snapshot.py", "fuzz_dump_header.py", "fuzz_pdb.py", "fuzz_isf.py"])
def test_a_fuzz_target_runs_clean(tmp_path, target):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "fuzz", target), "--runs", "40", "--seed", "3",
                             "--crashes", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "40 inputs" in result.stdout and "| all " in result.stdout
    assert os.listdir(tmp_path) == []


def test_the_runner_saves_and_reports_failing_inputs(tmp_path, capsys):
    def make_input(rng):
        return "bits", bytes([rng.getrandbits(8)])

    def check(path):
        with open(path, "rb") as handle:
            if handle.read()[0] % 2:
                raise runner.ContractBroken("odd input")
        return "even"

    code = runner.main("test", "a check that fails on odd bytes", make_input, check, ".bin",
                       ["--runs", "30", "--crashes", str(tmp_path)])
    saved = sorted(name for name in os.listdir(tmp_path) if name.endswith(".bin"))
    assert code == 1 and saved
    for name in saved:
        assert (tmp_path / name).read_bytes()[0] % 2
        assert "odd input" in (tmp_path / (name + ".txt")).read_text()
    assert "FAILED" in capsys.readouterr().out


def test_the_runner_stops_an_input_that_hangs(tmp_path, capsys):
    if not hasattr(runner.signal, "SIGALRM"):
        pytest.skip("the time limit needs SIGALRM")

    def check(path):
        while True:
            pass

    code = runner.main("test", "a check that never ends", lambda rng: ("loop", b"x"), check, ".bin",
                       ["--runs", "1", "--timeout", "0.2", "--crashes", str(tmp_path)])
    assert code == 1 and "no answer within 0.2 s" in (tmp_path / "loop-seed1-0.bin.txt").read_text()
