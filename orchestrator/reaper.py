"""The local Ray of a `basin run` ends with its driver, even a SIGKILLed one.

Ray binds the processes it starts to the driver (Linux: parent-death signal), except the two agents the raylet
starts (DashboardAgent, RuntimeEnvAgent): they outlive a killed driver for minutes. So the driver starts this
watchdog in its own session, holding one end of a pipe. Every 2 s the watchdog notes the driver's descendants
(psutil: pid and start time, so a reused pid is never taken for one of them); when the pipe closes, the driver
is gone, however it ended, and the watchdog ends every noted process still running (TERM, then KILL after 5 s).
After a normal end (ray.shutdown) there is nothing left and it just exits.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys

POLL_S = 2.0
GRACE_S = 5.0


_watchdog: subprocess.Popen | None = None  # held: its pipe must stay open while this process lives


def watch_driver() -> None:
    """Start the watchdog for this process (once); it lives until this process ends."""
    global _watchdog
    if _watchdog is None:
        _watchdog = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(os.getpid())],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)


def main(pid: int) -> None:
    import psutil

    noted: dict[int, psutil.Process] = {}
    try:
        driver = psutil.Process(pid)
        while not select.select([sys.stdin], [], [], POLL_S)[0] or os.read(sys.stdin.fileno(), 4096):
            for p in driver.children(recursive=True):
                if p.pid != os.getpid():
                    noted[p.pid] = p
    except psutil.NoSuchProcess:
        pass
    left = [p for p in noted.values() if p.is_running()]
    for p in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    for p in psutil.wait_procs(left, timeout=GRACE_S)[1]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


if __name__ == "__main__":
    main(int(sys.argv[1]))
