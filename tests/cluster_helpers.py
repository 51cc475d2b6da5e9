"""What tests that start real local services share: a free port, and a one-node Ray head on 127.0.0.1.

Standard library only at import (the Airflow test venv has Ray but not torch or gliclass-dist).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RayHead:
    """``ray start --head --block`` in a process group of its own, its files under ``temp_dir``."""

    proc: subprocess.Popen
    address: str  # the dashboard (Jobs API): http://127.0.0.1:PORT
    temp_dir: Path

    @classmethod
    def start(cls, ray_bin: Path, temp_dir: Path, env: dict[str, str] | None = None, num_cpus: int = 2) -> RayHead:
        dashboard = free_port()
        cmd = [
            str(ray_bin), "start", "--head", "--block", f"--port={free_port()}",
            "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
            "--include-dashboard=true", f"--num-cpus={num_cpus}", "--num-gpus=0", f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ]  # fmt: skip
        env = {**(env if env is not None else os.environ), "RAY_TMPDIR": str(temp_dir)}
        with open(Path(temp_dir) / "ray-start.log", "w") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return cls(proc, f"http://127.0.0.1:{dashboard}", Path(temp_dir))

    def wait_ready(self, timeout_s: float = 180) -> None:
        """Poll until the Jobs API answers (a bounded wait, not a timed assertion)."""
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                log = (self.temp_dir / "ray-start.log").read_text()
                raise RuntimeError(f"ray start exited: {log[-3000:]}")
            try:
                JobSubmissionClient(self.address).list_jobs()
                return
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def stop(self) -> None:
        """End the head's process group, then every process left that names its temp dir, by PID."""
        import psutil

        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=20)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        marker = str(self.temp_dir)
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if p.info["cmdline"] and any(marker in part for part in p.info["cmdline"]):
                    p.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass


AGENT_NOT_READY = "No available agent to submit job"


def submit_job(cmd: list[str], *, timeout_s: float = 540, agent_wait_s: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run a ``ray job submit`` command line, again while the head answers that no job agent is up yet.

    A fresh head serves the Jobs API before its node's agent has registered; on a loaded machine the first
    submit can get Ray's "No available agent to submit job, please try again later" (nothing was submitted).
    """
    deadline = time.monotonic() + agent_wait_s
    while True:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, **kwargs)
        if done.returncode == 0 or AGENT_NOT_READY not in done.stdout + done.stderr or time.monotonic() > deadline:
            return done
        time.sleep(3)
