"""The voxfit program's entry point (the ``voxfit`` script, ``python -m voxfit``): Ctrl-C, SIGTERM and SIGHUP are
handled from its first line, not only once the command line's module (80 ms of imports) has loaded and installed
its own handlers. A signal in that time had printed Python's traceback (SIGINT) or killed the process without a
word (SIGTERM, SIGHUP, exit -15 or -1); it now ends as any interrupted command: one line, exit 130."""

import os
import signal
import sys


def _stop(signum, frame):
    raise KeyboardInterrupt


def program():
    """:func:`voxfit.cli.program`, with the stop signals handled while it loads (a signal its parent made ignored,
    as for background jobs, stays ignored)."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):  # (_threads.STOP_SIGNALS, not imported: it loads in 80 ms)
        s = getattr(signal, name, None)
        if s is not None and signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, _stop)
    try:
        from .cli import program as command_line

        command_line()  # (never returns: it ends the process)
    except KeyboardInterrupt:  # (outside the command's own handling: before it began, or as the process ends)
        cli = sys.modules.get("voxfit.cli")
        if hasattr(cli, "say_interrupted"):
            cli.say_interrupted(0)  # (its line says whether the command had written its output)
        else:
            print("voxfit: interrupted; no output was written.", file=sys.stderr)
        sys.stderr.flush()
        os._exit(130)
