"""The supervisor's loop without Kamailio: a child that dies is logged and started again,
after a pause that grows while it keeps dying at once (b2bua.cluster.supervisor)."""

from __future__ import annotations

import logging
import sys
import time

from b2bua.cluster.supervisor import MAX_BACKOFF, Child, Supervisor
from b2bua.config import load_file

CONFIG = """
[server]
listen = "127.0.0.1:5060"
rtp_ports = "20000-20099"
[cluster]
workers = 1
worker_ports = "5100-5100"
"""


def test_a_dead_worker_is_logged_and_restarted_with_a_growing_pause(tmp_path, caplog):
    (tmp_path / "flows.toml").write_text(CONFIG)
    supervisor = Supervisor(load_file(tmp_path / "flows.toml"), run_dir=tmp_path)
    dies = Child("worker0", [sys.executable, "-c", "import sys; sys.exit(3)"], port=5100, index=0)
    supervisor.children = supervisor.workers = [dies]
    caplog.set_level(logging.INFO, logger="b2bua.cluster")
    dies.start()
    first_pid = dies.proc.pid
    pauses = []
    deadline = time.monotonic() + 10
    while dies.restarts < 3 and time.monotonic() < deadline:
        waiting = dies.restart_at is not None
        supervisor._watch()
        if not waiting and dies.restart_at is not None:  # it has just been seen dead
            pauses.append(dies.backoff)
        time.sleep(0.02)
    dies.proc.wait(5)
    assert dies.restarts == 3 and dies.proc.pid != first_pid
    lines = [r.getMessage() for r in caplog.records]
    assert f"worker=0 pid={first_pid} port=5100 event=started" in lines
    assert f"worker=0 pid={first_pid} port=5100 event=exited status=3" in lines
    assert sum("event=started" in line for line in lines) == 4
    assert pauses[:3] == [0.5, 1.0, 2.0] and max(pauses) <= MAX_BACKOFF, pauses


def test_what_a_dead_child_left_in_its_session_is_reaped_with_it(tmp_path):
    """Kamailio's forked processes outlive a main process killed with SIGKILL; left alone
    they hold the edge's ports and a restarted edge cannot bind."""
    import os
    import signal as _signal

    pid_file = tmp_path / "orphan.pid"
    script = (f"import os, subprocess, sys, time\n"
              f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
              f"time.sleep(60)\n")
    child = Child("edge", [sys.executable, "-c", script], port=0)
    child.start()
    deadline = time.monotonic() + 10
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    orphan = int(pid_file.read_text())
    os.kill(child.proc.pid, _signal.SIGKILL)  # type: ignore[union-attr]
    child.proc.wait()  # type: ignore[union-attr]
    os.kill(orphan, 0)  # still there: the main process's death did not take it
    child.log_exit()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.waitpid(orphan, os.WNOHANG)
        except ChildProcessError:
            pass
        try:
            os.kill(orphan, 0)
        except ProcessLookupError:
            break
        # a zombie reparented to init counts as gone once init reaps it
        try:
            with open(f"/proc/{orphan}/stat") as f:
                if f.read().split(")")[1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"pid {orphan} outlived its session's leader")
