#! python3
"""leakhunt inside WinDbg: ``!py leakhunt [options]`` (pykd), or outside it on Windows:
``python leakhunt.py MEMORY.DMP [options]``. ``!py leakhunt --help`` lists the options; docs/windbg.md
explains the setup. The logic lives in pykd_ext/windbg.py.
"""
import os
import sys

# Run from a source checkout (scripts/ next to pykd_ext/): use that checkout's package. The !py
# bootstrapper gives the script's full path in sys.argv[0] (it does not set __file__).
_checkout = os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[0])))
if os.path.isfile(os.path.join(_checkout, "pykd_ext", "windbg.py")) and _checkout not in sys.path:
    sys.path.insert(0, _checkout)

from pykd_ext.windbg import run_script  # noqa: E402

if __name__ == "__main__":
    run_script()
