"""Running a job script in fresh processes from a test, with a hard time limit that ends every process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

JOBS = Path(__file__).parent / "jobs"
SRC = Path(__file__).parents[2] / "src"


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def check(self) -> Finished:
        assert self.returncode == 0, (
            f"exit code {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        )
        return self


def run(
    command: Sequence[str], *, timeout: float = 60, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Finished:
    """Run ``command``; on timeout, kill its whole session (torchrun and its workers too) and fail the test."""
    environment = dict(os.environ if env is None else env)
    # The job must import this checkout's treadle, and a pytest environment's stray variables must not leak.
    environment["PYTHONPATH"] = os.pathsep.join([str(SRC), environment.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        environment.pop(name, None)
    environment.setdefault("OMP_NUM_THREADS", "1")
    started = time.monotonic()
    process = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(
            f"{' '.join(command)} did not finish within {timeout} s\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        ) from None
    finally:
        # Any rank left behind (it should not be) must not outlive the test.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    return Finished(process.returncode, stdout, stderr, time.monotonic() - started)


def run_job(name: str, *args: str, timeout: float = 60, env: dict[str, str] | None = None) -> Finished:
    """Run ``jobs/<name>.py`` with ``python``; its arguments follow."""
    return run([sys.executable, str(JOBS / f"{name}.py"), *args], timeout=timeout, env=env)
