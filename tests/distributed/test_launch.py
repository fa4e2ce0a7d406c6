"""fabric.launch(function) and failing ranks, with real processes: popen (re-run the script) and spawn."""

from __future__ import annotations

import ast
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.distributed.runner import JOBS, SRC, run_job

pytestmark = pytest.mark.distributed

# A failing rank must end the job long before the 30 s process-group timeout the jobs use.
PROMPT_SECONDS = 20


def results(stdout: str) -> list[dict[str, object]]:
    return [
        ast.literal_eval(line[len("RESULT ") :]) for line in stdout.splitlines() if line.startswith("RESULT ")
    ]


def test_launch_function_popen_returns_rank_zeros_result_in_the_launching_process() -> None:
    finished = run_job("job_launch", "popen", "ok").check()
    # Every rank runs the script, so each prints; the launching process (rank 0) prints rank 0's result.
    by_rank = sorted(results(finished.stdout), key=lambda result: result["rank"])  # type: ignore[arg-type, return-value]
    assert by_rank == [
        {"rank": 0, "value": 10, "total": 1.0, "params": 6},
        {"rank": 1, "value": 20, "total": 1.0, "params": 6},
    ]


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_launch_function_spawn_returns_rank_zeros_result(start_method: str) -> None:
    finished = run_job("job_launch", start_method, "ok").check()
    assert results(finished.stdout) == [{"rank": 0, "value": 10, "total": 1.0, "params": 6}]


@pytest.mark.parametrize(
    ("start_method", "mode", "message"),
    [
        ("popen", "raise1", "rank 1 failed on purpose"),
        ("popen", "raise0", "rank 0 failed on purpose"),
        ("popen", "kill1", "rank 1 (pid"),
        ("spawn", "raise1", "rank 1 failed on purpose"),
    ],
)
def test_a_failing_rank_ends_the_job_promptly_with_its_error(
    start_method: str, mode: str, message: str
) -> None:
    finished = run_job("job_launch", start_method, mode, timeout=60)
    assert finished.returncode != 0
    assert message in finished.stderr, finished.stderr
    assert finished.seconds < PROMPT_SECONDS, f"took {finished.seconds:.1f} s\n{finished.stderr}"
    assert "RESULT" not in finished.stdout


@pytest.mark.parametrize(("start_method", "runs"), [("popen", 10), ("spawn", 3), ("fork", 3)])
def test_a_rank_killed_during_a_collective_is_named_every_time(start_method: str, runs: int) -> None:
    # Rank 0's own "Connection reset by peer" used to end the job first and hide the kill.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=5) as pool:
        finished = list(pool.map(lambda _: run_job("job_launch", start_method, "kill1c", timeout=90), range(runs)))
    for job in finished:
        assert job.returncode != 0
        assert re.search(r"rank 1 \(pid \d+\) was killed by SIGKILL", job.stderr), job.stderr


@pytest.mark.parametrize("start_method", ["popen", "spawn"])
def test_a_rank_stuck_in_python_is_named_with_every_ranks_stack(start_method: str) -> None:
    finished = run_job("job_launch", start_method, "hang1", timeout=90)
    err = finished.stderr
    assert finished.returncode != 0 and "RESULT" not in finished.stdout
    assert "treadle: the job is hung: rank 0 has waited" in err, err
    stuck = err.split("Stuck outside any collective", 1)[1].split("Waiting in", 1)[0]
    assert re.search(r"rank 1 \(pid \d+\) at .*job_launch.py:\d+ in train", stuck), err
    assert "rank 0 (pid" in err.split("Waiting in torch.distributed or autograd:", 1)[1]
    # Both stacks are printed, and rank 1's shows the line it is stuck on.
    rank1 = err.split("treadle: stack of rank 1", 1)[1]
    assert "treadle: stack of rank 0" in err and "time.sleep(0.01)" in rank1.split("treadle: stack of", 1)[0]
    # hang_timeout is 3 s; the job (start-up included) ends well before the 30 s process-group timeout.
    assert finished.seconds < 25, f"took {finished.seconds:.1f} s"


@pytest.mark.parametrize("start_method", ["popen", "spawn"])
def test_slow_but_moving_work_and_a_slow_checkpoint_are_not_a_hang(start_method: str, tmp_path: Path) -> None:
    finished = run_job(
        "job_launch", start_method, "hangslow", timeout=90, env={**os.environ, "JOB_DIR": str(tmp_path)}
    ).check()
    assert "hung" not in finished.stderr
    assert results(finished.stdout)[0]["total"] == 1.0 and (tmp_path / "slow.ckpt").exists()


def test_ctrl_c_ends_every_rank() -> None:
    command = [sys.executable, str(JOBS / "job_launch.py"), "popen", "wait"]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    # A session of its own: the signal goes to its process group, as a terminal's Ctrl-C does.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        ready: set[str] = set()
        deadline = time.monotonic() + 60
        assert process.stdout is not None
        while ready != {"READY0", "READY1"} and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            ready.add(line.strip())
        assert ready == {"READY0", "READY1"}, process.stderr.read() if process.stderr else ""
        time.sleep(0.5)  # rank 0 is now waiting in the barrier
        interrupted = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=PROMPT_SECONDS)
        print(f"ended {time.monotonic() - interrupted:.2f} s after Ctrl-C")
        assert process.returncode != 0
        assert not group_alive(process.pid, within=5.0), "a rank outlived Ctrl-C"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


def group_alive(group: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("start_method", ["spawn", "fork", "popen"])
def test_each_rank_steps_its_own_copy_of_a_model_passed_to_launch(start_method: str) -> None:
    # mp.spawn moves the arguments into shared memory: without a copy per rank, 2 ranks apply each update twice.
    finished = run_job("job_launch", start_method, "update", timeout=60).check()
    rows = sorted(line.split() for line in finished.stdout.splitlines() if line.startswith("UPDATE"))
    assert [row[1] for row in rows] == ["0", "1"], finished.stdout
    for _, _, update_error, momentum_error in rows:
        assert float(update_error) == 0.0  # the update is exactly lr * buffer: applied once
        assert float(momentum_error) == 0.0  # the momentum buffer is this rank's, updated once
