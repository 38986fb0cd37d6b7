#! python3
"""leakhunt inside WinDbg: ``!py leakhunt [options]`` (pykd), or outside it on Windows:
``python leakhunt.py MEMORY.DMP [options]``. ``!py leakhunt --help`` lists the options; docs/windbg.md
explains the setup. The logic lives in pykd_ext/windbg.py.

pip installs this script everywhere leakhunt is installed. Where pykd is missing (Linux, macOS, or a
Windows Python without it), ``leakhunt.py --help`` says what the script is for and what to run instead.
"""
import importlib.util
import os
import sys

# Run from a source checkout (scripts/ next to pykd_ext/): use that checkout's package. The !py
# bootstrapper gives the script's full path in sys.argv[0] (it does not set __file__).
_checkout = os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[0])))
if os.path.isfile(os.path.join(_checkout, "pykd_ext", "windbg.py")) and _checkout not in sys.path:
    sys.path.insert(0, _checkout)

WITHOUT_PYKD = """\
usage: !py leakhunt [options]                 (inside WinDbg, through the pykd extension)
       python leakhunt.py MEMORY.DMP [options]  (on Windows, with pykd installed)

leakhunt.py is leakhunt's WinDbg script: it finds the driver that leaked locked pages or lock entries
in the crashed kernel WinDbg has open, with links to !irp, dt nt!_MDL, !pool and lmvm in its report.

pykd is not installed in this Python, so the script cannot run here. Without a debugger, on any OS,
the same analysis reads the dump file itself:

  leakhunt analyze MEMORY.DMP      (leakhunt --help lists the options)

To use the script: pip install pykd in a Windows Python of WinDbg's bitness, load the pykd extension
in WinDbg (.load pykd), then run !py leakhunt --help there. The setup is in docs/windbg.md.
"""


def _asks_for_help(arguments) -> bool:
    return any(argument in ("-h", "--help") for argument in arguments)


if __name__ == "__main__":
    if importlib.util.find_spec("pykd") is None and _asks_for_help(sys.argv[1:]):
        sys.stdout.write(WITHOUT_PYKD)
        sys.exit(0)
    from pykd_ext.windbg import run_script

    run_script()
