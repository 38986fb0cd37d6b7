"""The ``leakhunt`` command's entry point (setup.cfg ``console_scripts``, ``python -m pykd_ext``).

It imports nothing before it can take Ctrl+C: an interrupt while Python is still loading leakhunt (its
argument parser, the analyses, numpy) is one line and exit 130, like an interrupt at any later point,
never a traceback.
"""


def main() -> int:
    try:
        from .cli import main as leakhunt
    except KeyboardInterrupt:
        from .console import interrupted_line  # a few lines with no imports of their own

        return interrupted_line()
    return leakhunt()
