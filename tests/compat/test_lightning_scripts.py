"""Lightning Fabric scripts run under treadle with only their imports changed, and agree with Lightning.

Each script in ``scripts/`` is written against Lightning. It always runs under treadle (imports switched by
``to_treadle``); when ``lightning`` is installed (``pip install lightning==2.6.6``) it also runs under
Lightning, and the results are compared. Lightning's own ``examples/fabric/build_your_own_trainer`` runs
when a checkout of its repository is named by ``TREADLE_LIGHTNING_REPO``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parent / "scripts"
HAS_LIGHTNING = importlib.util.find_spec("lightning") is not None
needs_lightning = pytest.mark.skipif(not HAS_LIGHTNING, reason="needs `pip install lightning==2.6.6`")

# The import lines a user changes, old -> new; nothing else in a script is touched.
IMPORTS = [
    ("import lightning as L\n", "import treadle as L\n"),
    ("from lightning.fabric.", "from treadle."),
    ("from lightning.fabric import", "from treadle import"),
    ("from lightning.pytorch.utilities.model_helpers import", "from treadle.utilities.model_helpers import"),
    ("from lightning_utilities import", "from treadle.utilities import"),
]


def to_treadle(source: str) -> str:
    """`source` with its Lightning imports replaced by treadle's; every other line is kept."""
    lines = source.splitlines(keepends=True)
    changed = []
    for line in lines:
        if line.startswith(("import ", "from ")):
            for old, new in IMPORTS:
                if line.startswith(old):
                    line = new + line[len(old) :]
                    break
        changed.append(line)
    assert "lightning" not in "".join(line for line in changed if line.startswith(("import", "from")))
    return "".join(changed)


def run(script: Path, library: str, tmp_path: Path, *args: str) -> dict[str, Any]:
    folder = tmp_path / library
    folder.mkdir(exist_ok=True)
    source = script.read_text()
    target = folder / script.name
    target.write_text(source if library == "lightning" else to_treadle(source))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, str(target), *args], cwd=folder, capture_output=True, text=True, timeout=240, env=env
    )
    assert result.returncode == 0, f"{library}: {result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_import_switch_changes_imports_only() -> None:
    source = (SCRIPTS / "fabric_loop.py").read_text()
    switched = to_treadle(source)
    assert len(switched.splitlines()) == len(source.splitlines())
    differing = [
        new for old, new in zip(source.splitlines(), switched.splitlines(), strict=True) if old != new
    ]
    assert differing and all(line.startswith(("import ", "from ")) for line in differing)


def test_fabric_loop_under_treadle(tmp_path: Path) -> None:
    out = run(SCRIPTS / "fabric_loop.py", "treadle", tmp_path, str(tmp_path / "treadle"))
    assert out["batches"] == 18 and len(out["epoch_means"]) == 3
    assert out["epoch_means"][-1] < out["epoch_means"][0]
    assert out["gathered"] == {"batches": [18], "mean": [0.5]}  # treadle keeps the rank dimension
    assert out["reduced"] == 2.0 and out["remainder"] == {"epoch": 3}
    assert out["loaded_equal"] and out["unwrapped"] and out["is_instance_of_sgd"]
    assert out["log_dir_name"] == "version_0"
    assert (tmp_path / "treadle" / "run" / "version_0" / "metrics.csv").exists()


@needs_lightning
def test_fabric_loop_gives_the_same_numbers_under_both(tmp_path: Path) -> None:
    ours = run(SCRIPTS / "fabric_loop.py", "treadle", tmp_path, str(tmp_path / "treadle"))
    theirs = run(SCRIPTS / "fabric_loop.py", "lightning", tmp_path, str(tmp_path / "lightning"))
    # A documented difference: with one process Lightning's all_gather drops the rank dimension.
    assert theirs.pop("gathered") == {"batches": 18, "mean": 0.5}
    ours.pop("gathered")
    assert ours == theirs


def test_ddp_spawn_applies_each_update_once_under_treadle(tmp_path: Path) -> None:
    out = run(SCRIPTS / "ddp_spawn.py", "treadle", tmp_path)
    assert out["world_size"] == 2
    # Each rank's gradient is the mean over ranks of 4 * (rank + 1) = 6 per weight; lr 0.5 gives 3.0.
    assert out["updates"] == [[[3.0, 3.0, 3.0]], [[3.0, 3.0, 3.0]]]


@needs_lightning
def test_ddp_spawn_matches_lightning(tmp_path: Path) -> None:
    assert run(SCRIPTS / "ddp_spawn.py", "treadle", tmp_path) == run(
        SCRIPTS / "ddp_spawn.py", "lightning", tmp_path
    )


def test_trainer_helpers_under_treadle(tmp_path: Path) -> None:
    out = run(SCRIPTS / "trainer_helpers.py", "treadle", tmp_path)
    assert out["parse"] == ["optimizer", "optimizers", "optimizer", "other"]
    assert out["fsdp"] is False
    assert out["wrapped"] == [True, True, True, False] and out["unwrapped"] == [True, True, True]
    assert out["warned"] == ["no validation_step: skipping validation"]
    assert out["batches"] == [[0, 1], [2, 3]]


@needs_lightning
def test_trainer_helpers_match_lightning(tmp_path: Path) -> None:
    theirs = run(SCRIPTS / "trainer_helpers.py", "lightning", tmp_path)
    assert run(SCRIPTS / "trainer_helpers.py", "treadle", tmp_path) == theirs


def _lightning_example(relative: str) -> str:
    repo = os.environ.get("TREADLE_LIGHTNING_REPO")
    if not repo:
        pytest.skip("set TREADLE_LIGHTNING_REPO to a pytorch-lightning checkout (or its git folder)")
    if (Path(repo) / relative).is_file():
        return (Path(repo) / relative).read_text()
    shown = subprocess.run(
        ["git", "--git-dir", repo, "show", f"HEAD:{relative}"], capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


@pytest.mark.parametrize("devices", [1, 2])
def test_lightnings_build_your_own_trainer_runs_with_its_imports_changed(
    tmp_path: Path, devices: int
) -> None:
    source = _lightning_example("examples/fabric/build_your_own_trainer/trainer.py")
    # The one added line is an import too: it keeps annotations such as `model: L.LightningModule` unevaluated.
    (tmp_path / "trainer.py").write_text("from __future__ import annotations\n" + to_treadle(source))
    driver = tmp_path / "byot_driver.py"
    driver.write_text((SCRIPTS / "byot_driver.py").read_text())
    result = subprocess.run(
        [sys.executable, str(driver), str(devices)], cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["global_step"] == 15 and out["epoch"] == 3 and out["rank"] == 0
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == [
        "epoch-0001.ckpt", "epoch-0002.ckpt", "epoch-0003.ckpt"
    ]  # fmt: skip


@pytest.mark.distributed
@pytest.mark.parametrize(("dp", "tp"), [(1, 2), (2, 1)])
def test_lightnings_tensor_parallel_example_runs_with_its_imports_changed(
    tmp_path: Path, dp: int, tp: int
) -> None:
    for name in ("model.py", "parallelism.py", "data.py"):
        (tmp_path / name).write_text(
            to_treadle(_lightning_example(f"examples/fabric/tensor_parallel/{name}"))
        )
    driver = tmp_path / "tp_driver.py"
    driver.write_text((SCRIPTS / "tp_driver.py").read_text())
    result = subprocess.run(
        [sys.executable, str(driver), str(dp), str(tp)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["iterations"] == 128 // 8 // dp and out["last"] < out["first"]
    assert (tmp_path / "checkpoint.pt" / "meta.pt").is_file(), "a sharded checkpoint folder"
