from __future__ import annotations

import argparse
import dataclasses
import errno
import gc
import json
import math
import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from treadle.files import atomic_open
from treadle.loggers import CSVLogger, Logger, read_csv_metrics
from treadle.loggers.base import RunFolder, next_version, version_folders


def metrics_file(logger: CSVLogger) -> Path:
    return Path(logger.log_dir) / "metrics.csv"


def test_is_a_logger(tmp_path: Path) -> None:
    assert isinstance(CSVLogger(tmp_path), Logger)


def test_versions_count_up_from_existing_folders(tmp_path: Path) -> None:
    first = CSVLogger(tmp_path)
    first.log_metrics({"loss": 1.0}, step=0)
    first.finalize("success")
    second = CSVLogger(tmp_path)
    second.log_metrics({"loss": 1.0}, step=0)
    second.finalize("success")

    assert (first.version, second.version) == (0, 1)
    assert Path(first.log_dir) == tmp_path / "treadle_logs" / "version_0"
    assert Path(second.log_dir) == tmp_path / "treadle_logs" / "version_1"
    assert metrics_file(first).is_file() and metrics_file(second).is_file()


def test_next_version_is_one_above_the_highest_and_ignores_other_names(tmp_path: Path) -> None:
    for folder in ("version_0", "version_7", "version_x", "baseline"):
        (tmp_path / folder).mkdir()
    (tmp_path / "version_9").write_text("a file, not a folder")
    assert next_version(tmp_path) == 8
    assert next_version(tmp_path / "missing") == 0


def test_constructing_and_reading_log_dir_create_nothing(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path / "root")
    assert logger.log_dir == os.fspath(tmp_path / "root" / "treadle_logs" / "version_0")
    assert not (tmp_path / "root").exists()
    logger.log_metrics({"loss": 1.0}, step=0)  # the row is buffered; the folder claims the version
    assert Path(logger.log_dir).is_dir()
    assert not metrics_file(logger).exists()
    logger.save()
    assert metrics_file(logger).is_file()


def test_loggers_made_one_after_another_in_a_process_get_their_own_versions(tmp_path: Path) -> None:
    # A sweep in one script: neither logger has written a row when the next one picks its version.
    first = CSVLogger(tmp_path)
    first.log_metrics({"loss": 1.0}, step=0)
    second = CSVLogger(tmp_path)
    second.log_metrics({"loss": 2.0}, step=0)
    assert (first.version, second.version) == (0, 1)
    first.finalize("success")
    second.finalize("success")
    assert read_csv_metrics(metrics_file(first)) == {"loss": [(0, 1.0)]}
    assert read_csv_metrics(metrics_file(second)) == {"loss": [(0, 2.0)]}


def test_version_is_fixed_at_first_use(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    assert logger.version == 0
    (tmp_path / "treadle_logs" / "version_0").mkdir(parents=True)
    assert logger.version == 0  # not re-resolved


def test_explicit_int_and_str_versions(tmp_path: Path) -> None:
    numbered = CSVLogger(tmp_path, name="exp", version=5)
    named = CSVLogger(tmp_path, name="exp", version="baseline")
    assert numbered.log_dir == os.fspath(tmp_path / "exp" / "version_5")
    assert named.log_dir == os.fspath(tmp_path / "exp" / "baseline")
    assert (numbered.version, named.version, named.name, named.root_dir) == (
        5,
        "baseline",
        "exp",
        str(tmp_path),
    )


def test_new_column_rewrites_header_and_keeps_every_earlier_value(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    for step in range(3):
        logger.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    logger.save()
    assert metrics_file(logger).read_text().splitlines()[0] == "step,loss"

    # "acc" sorts before "loss": the existing column must move, not just gain a neighbour.
    logger.log_metrics({"loss": 0.2, "acc": 0.9}, step=3)
    logger.log_metrics({"zeta": 7}, step=4)
    logger.save()

    lines = metrics_file(logger).read_text().splitlines()
    assert lines == [
        "step,acc,loss,zeta",
        "0,,1.0,",
        "1,,0.5,",
        "2,,0.3333333333333333,",
        "3,0.9,0.2,",
        "4,,,7",
    ]
    assert read_csv_metrics(metrics_file(logger)) == {
        "acc": [(3, 0.9)],
        "loss": [(0, 1.0), (1, 0.5), (2, 1 / 3), (3, 0.2)],
        "zeta": [(4, 7.0)],
    }
    assert [p.name for p in Path(logger.log_dir).iterdir()] == ["metrics.csv"]  # no temp files left


def test_rows_wait_for_the_cadence_and_save_writes_them(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=3)
    logger.log_metrics({"loss": 3.0}, step=0)
    logger.log_metrics({"loss": 2.0}, step=1)
    assert not metrics_file(logger).exists()

    logger.log_metrics({"loss": 1.0}, step=2)
    assert read_csv_metrics(metrics_file(logger)) == {"loss": [(0, 3.0), (1, 2.0), (2, 1.0)]}

    logger.log_metrics({"loss": 0.5}, step=3)
    assert read_csv_metrics(metrics_file(logger))["loss"][-1] == (2, 1.0)
    logger.save()
    assert read_csv_metrics(metrics_file(logger))["loss"][-1] == (3, 0.5)


def test_calls_with_the_same_step_share_a_row_even_across_a_flush(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=2)
    logger.log_metrics({"loss": 1.0}, step=10)
    logger.log_metrics({"lr": 0.1}, step=10)  # flush point
    logger.log_metrics({"acc": 0.5}, step=10)
    logger.log_metrics({"loss": 0.5}, step=10)  # same metric again: a new row
    logger.log_metrics({"loss": 0.4})
    logger.log_metrics({"lr": 0.2})  # no step: the logger's own count of step-less calls, 0, 1, ...
    logger.finalize("success")
    assert metrics_file(logger).read_text().splitlines() == [
        "step,acc,loss,lr",
        "10,0.5,1.0,0.1",
        "10,,0.5,",
        "0,,0.4,",
        "1,,,0.2",
    ]
    assert read_csv_metrics(metrics_file(logger))["loss"] == [(10, 1.0), (10, 0.5), (0, 0.4)]


def test_with_a_cadence_of_1_every_call_is_in_the_file_at_once(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    logger.log_metrics({"loss": 1.0}, step=0)
    assert metrics_file(logger).read_text() == "step,loss\n0,1.0\n"
    # Fabric.log sends one metric per call: the step's row is rewritten in place, not duplicated.
    logger.log_metrics({"lr": 0.1}, step=0)
    assert metrics_file(logger).read_text() == "step,loss,lr\n0,1.0,0.1\n"
    logger.log_metrics({"loss": 0.5}, step=1)
    logger.log_metrics({"lr": 0.05}, step=1)
    assert metrics_file(logger).read_text() == "step,loss,lr\n0,1.0,0.1\n1,0.5,0.05\n"
    logger.log_metrics({"acc": 0.75}, step=1)  # a new column and a merge at once
    logger.log_metrics({"loss": 0.25}, step=1)  # the same metric again: a new row
    logger.log_metrics({"loss": 0.125})  # no step: counted 0, 1, ... by the logger
    logger.log_metrics({"lr": 0.01})
    assert metrics_file(logger).read_text().splitlines() == [
        "step,acc,loss,lr",
        "0,,1.0,0.1",
        "1,0.75,0.5,0.05",
        "1,,0.25,",
        "0,,0.125,",
        "1,,,0.01",
    ]
    logger.finalize("success")
    assert metrics_file(logger).read_text().count("\n") == 6


def test_a_merge_into_the_written_row_of_a_resumed_file_keeps_earlier_rows(tmp_path: Path) -> None:
    first = CSVLogger(tmp_path, version="run")
    first.log_metrics({"loss": 1.0}, step=0)
    first.finalize("interrupted")
    resumed = CSVLogger(tmp_path, version="run", flush_logs_every_n_steps=1, resume=True)
    resumed.log_metrics({"loss": 0.5}, step=1)
    resumed.log_metrics({"acc": 0.5}, step=1)
    resumed.log_metrics({"lr": 0.1}, step=1)
    assert metrics_file(resumed).read_text() == "step,acc,loss,lr\n0,,1.0,\n1,0.5,0.5,0.1\n"


def test_a_collected_logger_writes_what_it_buffered(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    for step in range(3):
        logger.log_metrics({"loss": float(step)}, step=step)
    path = metrics_file(logger)
    assert not path.exists()
    del logger
    gc.collect()
    assert read_csv_metrics(path) == {"loss": [(0, 0.0), (1, 1.0), (2, 2.0)]}


def test_a_process_that_exits_without_finalize_writes_every_row(tmp_path: Path) -> None:
    # The logger stays referenced until the interpreter exits, as in a Fabric loop without finalize().
    script = textwrap.dedent(
        f"""
        from treadle.loggers import CSVLogger
        logger = CSVLogger({os.fspath(tmp_path)!r}, version=0)
        for step in range(3):
            logger.log_metrics({{"loss": step / 4}}, step=step)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    path = tmp_path / "treadle_logs" / "version_0" / "metrics.csv"
    assert path.read_text() == "step,loss\n0,0.0\n1,0.25\n2,0.5\n"


def test_a_pickled_logger_starts_empty_and_rows_are_written_once(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=10)
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.save()
    logger.log_metrics({"loss": 0.5}, step=1)  # buffered when the logger is copied
    clone = pickle.loads(pickle.dumps(logger))
    assert clone.log_dir == logger.log_dir
    clone.save()
    assert read_csv_metrics(metrics_file(logger)) == {"loss": [(0, 1.0)]}  # the clone has nothing to write
    logger.finalize("success")
    clone.log_metrics({"acc": 0.5}, step=2)  # a new column: the clone reads the header from the file
    clone.save()
    path = metrics_file(logger)
    del clone, logger
    gc.collect()
    assert path.read_text() == "step,acc,loss\n0,,1.0\n1,,0.5\n2,0.5,\n"


def test_rows_follow_a_header_that_a_pickled_copy_widened(tmp_path: Path) -> None:
    # Fabric(strategy="ddp_spawn"): the child's copy writes to the same file as the parent.
    parent = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    parent.log_metrics({"loss": 1.0}, step=0)
    child = pickle.loads(pickle.dumps(parent))
    child.log_metrics({"acc": 0.5, "loss": 0.9}, step=1)  # a new column: the header is rewritten
    child.finalize("success")
    parent.log_metrics({"loss": 0.8}, step=2)
    parent.finalize("success")
    assert metrics_file(parent).read_text() == "step,acc,loss\n0,,1.0\n1,0.5,0.9\n2,,0.8\n"


def test_a_merge_after_another_writer_appended_adds_a_row_instead_of_cutting_the_file(tmp_path: Path) -> None:
    first = CSVLogger(tmp_path, version=0, flush_logs_every_n_steps=1)
    second = CSVLogger(tmp_path, version=0, flush_logs_every_n_steps=1, resume=True)
    first.log_metrics({"loss": 1.0}, step=0)
    second.log_metrics({"acc": 0.5}, step=1)
    second.log_metrics({"loss": 0.75}, step=1)  # merged into second's own last row, in place
    first.log_metrics({"lr": 0.1}, step=0)  # first's last row is no longer the file's last line
    first.log_metrics({"acc": 0.25}, step=0)  # merged into the row just written, in place
    assert metrics_file(first).read_text().splitlines() == [
        "step,acc,loss,lr",
        "0,,1.0,",
        "1,0.5,0.75,",
        "0,0.25,,0.1",
    ]


def test_finalize_is_idempotent_and_logging_can_continue(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    assert logger.status is None
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.finalize("success")
    content = metrics_file(logger).read_text()
    logger.finalize("success")
    assert metrics_file(logger).read_text() == content
    assert logger.status == "success"

    logger.log_metrics({"loss": 0.5}, step=1)
    logger.finalize("interrupted")
    assert read_csv_metrics(metrics_file(logger)) == {"loss": [(0, 1.0), (1, 0.5)]}
    assert logger.status == "interrupted"


def test_finalize_without_metrics_writes_nothing(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    logger.save()
    logger.finalize("failed")
    assert list(tmp_path.iterdir()) == []


def test_prefix_joins_with_a_slash(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, prefix="train")
    logger.log_metrics({"loss": 1.0, "step": 3.0}, step=0)  # "train/step" does not clash with the step column
    logger.save()
    assert logger.prefix == "train"
    assert metrics_file(logger).read_text().splitlines()[0] == "step,train/loss,train/step"


def test_values_ints_tensors_and_non_finite(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    logger.log_metrics(
        {"epoch": 3, "t": torch.tensor(0.25), "one": torch.tensor([2.0]), "nan": math.nan, "inf": math.inf},
        step=0,
    )
    logger.log_metrics({"inf": -math.inf}, step=1)
    logger.save()
    lines = metrics_file(logger).read_text().splitlines()
    assert lines == ["step,epoch,inf,nan,one,t", "0,3,inf,nan,2.0,0.25", "1,,-inf,,,"]
    back = read_csv_metrics(metrics_file(logger))
    assert math.isnan(back["nan"][0][1])
    assert back["inf"] == [(0, math.inf), (1, -math.inf)]


def test_hparams_json(tmp_path: Path) -> None:
    @dataclasses.dataclass
    class Optim:
        lr: float = 1e-3
        betas: tuple[float, float] = (0.9, 0.99)

    logger = CSVLogger(tmp_path, version=0)
    logger.log_hyperparams(
        {"optim": Optim(), "path": tmp_path / "data", "dtype": torch.bfloat16, "layers": [64, 64], 3: None}
    )
    logger.log_hyperparams(argparse.Namespace(seed=7, layers=[32]))  # merged; later values win

    text = (Path(logger.log_dir) / "hparams.json").read_text()
    assert text.startswith('{\n  "optim": {\n    "lr": 0.001')  # indented for people
    assert json.loads(text) == {
        "optim": {"lr": 0.001, "betas": [0.9, 0.99]},
        "path": str(tmp_path / "data"),
        "dtype": "torch.bfloat16",
        "layers": [32],
        "3": None,
        "seed": 7,
    }


def test_resuming_an_explicit_version_appends_after_existing_rows(tmp_path: Path) -> None:
    first = CSVLogger(tmp_path, version="run")
    first.log_metrics({"loss": 1.0}, step=0)
    first.finalize("interrupted")
    # A crash mid-append can leave the last line unterminated.
    with open(metrics_file(first), "a") as file:
        file.write("1,0.9")

    resumed = CSVLogger(tmp_path, version="run", resume=True)
    resumed.log_metrics({"loss": 0.8}, step=2)
    with pytest.warns(UserWarning, match=r"last row of .*metrics.csv was torn.*'1,0.9'.*removed"):
        resumed.save()
    resumed.log_metrics({"loss": 0.7, "acc": 0.1}, step=3)
    resumed.save()
    # The torn row may hold cut cells (0.9 of 0.95): it is dropped, not trusted.
    assert read_csv_metrics(metrics_file(resumed)) == {
        "acc": [(3, 0.1)],
        "loss": [(0, 1.0), (2, 0.8), (3, 0.7)],
    }


def test_refuses_to_append_to_a_foreign_csv(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, version=0)
    Path(logger.log_dir).mkdir(parents=True)
    metrics_file(logger).write_text("epoch,loss\n0,1.0\n")
    logger.log_metrics({"loss": 1.0}, step=0)
    with pytest.raises(ValueError, match=r"not written by CSVLogger: its first column is 'epoch'.*version="):
        logger.save()
    assert metrics_file(logger).read_text() == "epoch,loss\n0,1.0\n"
    # The row is still buffered; when the logger is collected, nobody is left to catch the error.
    with pytest.warns(RuntimeWarning, match=r"CSVLogger could not write its last 1 row\(s\) to .*'epoch'"):
        del logger
        gc.collect()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"root_dir": 123}, TypeError, r"CSVLogger\(root_dir=123\) must be a str or os.PathLike, got int"),
        ({"name": "  "}, ValueError, r"CSVLogger\(name='  '\) is only spaces.*'treadle_logs'"),
        ({"name": 3}, TypeError, r"CSVLogger\(name=3\) must be a str or None, got int"),
        (
            {"root_dir": "$TREADLE_UNSET_VAR/logs"},
            ValueError,
            r"root_dir='\$TREADLE_UNSET_VAR/logs'\) names the environment variable \$TREADLE_UNSET_VAR, which is not set",
        ),
        ({"resume": "yes"}, TypeError, r"CSVLogger\(resume='yes'\) must be True or False"),
        ({"version": -1}, ValueError, r"CSVLogger\(version=-1\) must be >= 0. Pass None"),
        ({"version": 1.5}, TypeError, r"CSVLogger\(version=1.5\) must be None, an int or a str, got float"),
        ({"version": "a/b"}, ValueError, r"CSVLogger\(version='a/b'\) must be a plain folder name"),
        ({"version": ".."}, ValueError, r"CSVLogger\(version='..'\) must be a plain folder name"),
        ({"prefix": None}, TypeError, r"CSVLogger\(prefix=None\) must be a str.*Pass ''"),
        ({"flush_logs_every_n_steps": 0}, ValueError, r"flush_logs_every_n_steps=0\) must be a positive int"),
        ({"flush_logs_every_n_steps": True}, ValueError, r"flush_logs_every_n_steps=True\) must be"),
        ({"flush_logs_every_n_steps": 2.0}, ValueError, r"flush_logs_every_n_steps=2.0\) must be.*Pass 1"),
    ],
)
def test_bad_constructor_arguments(
    tmp_path: Path, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    arguments: dict[str, object] = {"root_dir": tmp_path, **kwargs}
    with pytest.raises(error, match=message):
        CSVLogger(**arguments)  # type: ignore[arg-type]


def test_bad_log_calls(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    with pytest.raises(TypeError, match=r"log_metrics\(step='3'\) must be an int or None, got str"):
        logger.log_metrics({"loss": 1.0}, step="3")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"log_metrics\(step=1.5\) must be an int"):
        logger.log_metrics({"loss": 1.0}, step=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"metric 'loss' = 'low' \(str\), which is not a number"):
        logger.log_metrics({"loss": "low"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"metric 'w' = .* \(Tensor\), which is not a number"):
        logger.log_metrics({"w": torch.ones(3)})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"metric named 'step'.*Rename the metric"):
        logger.log_metrics({"step": 1.0})
    with pytest.raises(TypeError, match=r"log_hyperparams\(params=\[1\]\) must be a Mapping"):
        logger.log_hyperparams([1])  # type: ignore[arg-type]
    # Integer-valued steps from numpy or tensors are fine.
    logger.log_metrics({"loss": 1.0}, step=torch.tensor(4))  # type: ignore[arg-type]
    logger.save()
    assert read_csv_metrics(metrics_file(logger)) == {"loss": [(4, 1.0)]}


def test_read_csv_metrics_tolerates_float_steps_and_reports_bad_cells(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("step,loss\n10.0,1\n,2\n\n")
    assert read_csv_metrics(good) == {"loss": [(10, 1.0), (None, 2.0)]}

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert read_csv_metrics(empty) == {}

    bad = tmp_path / "bad.csv"
    bad.write_text("step,loss\n0,1\n1,oops\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 3: column 'loss' holds 'oops'"):
        read_csv_metrics(bad)
    bad.write_text("step,loss\n0.5,1\n")
    with pytest.raises(ValueError, match=r"line 2: the step column holds '0.5', which is not an integer"):
        read_csv_metrics(bad)
    with pytest.raises(FileNotFoundError):
        read_csv_metrics(tmp_path / "missing.csv")


def test_atomic_open_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as file:
        file.write("new, half written")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_run_folder_path_for_each_version_kind(tmp_path: Path) -> None:
    assert RunFolder(tmp_path, "n", None, owner="X").path == tmp_path / "n" / "version_0"
    assert RunFolder(tmp_path, "n", 2, owner="X").path == tmp_path / "n" / "version_2"
    assert RunFolder(tmp_path, "n", "best", owner="X").path == tmp_path / "n" / "best"


def test_fabric_log_of_a_non_number_is_blamed_on_the_call_not_the_logger(tmp_path: Path) -> None:
    from treadle import Fabric

    logger = CSVLogger(tmp_path)
    fabric = Fabric(accelerator="cpu", devices=1, loggers=logger)
    with pytest.raises(TypeError) as raised:
        fabric.log("x", "abc")
    message = str(raised.value)
    assert message.startswith("Fabric.log('x', ...) got 'abc' (str), which is not a number.")
    assert "tensor with one element" in message and "CSVLogger" not in message
    with pytest.raises(TypeError, match=r"Fabric.log\('w', \.\.\.\) got \[1\.0\] \(list\)"):
        fabric.log_dict({"ok": 1.0, "w": [1.0]})
    # Nothing reached the logger from the failed calls; direct callers still get the logger's own check.
    fabric.log("x", torch.tensor(3))
    logger.finalize("success")
    assert read_csv_metrics(metrics_file(logger)) == {"x": [(0, 3.0)]}
    with pytest.raises(TypeError, match=r"CSVLogger.log_metrics got metric 'x' = 'abc'"):
        CSVLogger(tmp_path).log_metrics({"x": "abc"})


def test_fabric_log_keeps_ints_exact(tmp_path: Path) -> None:
    from treadle import Fabric

    logger = CSVLogger(tmp_path)
    Fabric(accelerator="cpu", devices=1, loggers=logger).log_dict(
        {"n": torch.tensor(2**53 + 1), "m": 7}, step=0
    )
    logger.finalize("success")
    header, row = (line.split(",") for line in metrics_file(logger).read_text().splitlines())
    assert dict(zip(header, row, strict=True)) == {"step": "0", "n": str(2**53 + 1), "m": "7"}


def test_version_folders_maps_numbers_to_folders(tmp_path: Path) -> None:
    for folder in ("version_0", "version_12", "version_x", "other"):
        (tmp_path / folder).mkdir()
    (tmp_path / "version_3").write_text("a file, not a folder")
    assert version_folders(tmp_path) == {0: tmp_path / "version_0", 12: tmp_path / "version_12"}
    assert version_folders(tmp_path / "missing") == {}


def test_name_none_or_empty_logs_to_root_dir_version_n(tmp_path: Path) -> None:
    for name in (None, ""):
        logger = CSVLogger(tmp_path, name=name, flush_logs_every_n_steps=1)
        logger.log_metrics({"loss": 1.0}, step=0)
        assert logger.name == ""
    assert sorted(path.name for path in tmp_path.iterdir()) == ["version_0", "version_1"]
    assert (tmp_path / "version_1" / "metrics.csv").read_text() == "step,loss\n0,1.0\n"


def test_home_and_environment_variables_are_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", os.fspath(tmp_path / "home"))
    monkeypatch.setenv("TREADLE_TEST_RUNS", os.fspath(tmp_path / "scratch"))
    at_home = CSVLogger("~/logs", name="exp", version=0, flush_logs_every_n_steps=1)
    at_home.log_metrics({"loss": 1.0}, step=0)
    assert at_home.root_dir == os.fspath(tmp_path / "home" / "logs")
    assert (tmp_path / "home" / "logs" / "exp" / "version_0" / "metrics.csv").is_file()
    scratch = CSVLogger("${TREADLE_TEST_RUNS}/logs", name="exp", version=0)
    assert scratch.log_dir == os.fspath(tmp_path / "scratch" / "logs" / "exp" / "version_0")


def test_steps_are_counted_per_logger_when_none_is_given(tmp_path: Path) -> None:
    first = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    second = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    for value in (1.0, 0.5, 0.25):
        first.log_metrics({"loss": value})
    second.log_metrics({"loss": 9.0})
    assert read_csv_metrics(metrics_file(first)) == {"loss": [(0, 1.0), (1, 0.5), (2, 0.25)]}
    assert read_csv_metrics(metrics_file(second)) == {"loss": [(0, 9.0)]}


def test_a_reused_version_warns_and_starts_afresh(tmp_path: Path) -> None:
    # Regression: a second run given the same version appended its rows to the first run's, silently.
    earlier = CSVLogger(tmp_path, version=0)
    earlier.log_metrics({"loss": 1.0, "acc": 0.1}, step=0)
    earlier.finalize("success")
    again = CSVLogger(tmp_path, version=0)
    with pytest.warns(UserWarning, match=r"metrics.csv already holds metrics of an earlier run.*resume=True"):
        again.log_metrics({"loss": 0.5}, step=0)
    assert read_csv_metrics(metrics_file(again)) == {"acc": [(0, 0.1)], "loss": [(0, 1.0)]}  # until it writes
    again.finalize("success")
    assert metrics_file(again).read_text() == "step,loss\n0,0.5\n"


def test_resume_adds_to_the_rows_without_a_warning(tmp_path: Path) -> None:
    earlier = CSVLogger(tmp_path, version=0)
    earlier.log_metrics({"loss": 1.0}, step=0)
    earlier.finalize("interrupted")
    resumed = CSVLogger(tmp_path, version=0, resume=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.log_metrics({"loss": 0.5}, step=1)
        resumed.finalize("success")
    assert read_csv_metrics(metrics_file(resumed)) == {"loss": [(0, 1.0), (1, 0.5)]}


def test_a_pickled_copy_and_its_original_replace_an_earlier_file_once(tmp_path: Path) -> None:
    # Fabric(strategy="ddp_spawn"): the parent's logger is pickled before it logs; the child's copy writes
    # first, then the parent. The earlier run's rows go; neither of the two loses the other's.
    CSVLogger(tmp_path, version=0, flush_logs_every_n_steps=1).log_metrics({"loss": 9.0}, step=0)
    parent = CSVLogger(tmp_path, version=0, flush_logs_every_n_steps=1)
    with pytest.warns(UserWarning, match="already holds metrics"):
        child = pickle.loads(pickle.dumps(parent))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, when the decision was taken
        child.log_metrics({"loss": 1.0}, step=1)
        parent.log_metrics({"loss": 0.5}, step=2)
    assert read_csv_metrics(metrics_file(parent)) == {"loss": [(1, 1.0), (2, 0.5)]}


def test_experiment_is_the_writer_with_lightning_names(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, version=0)
    writer = logger.experiment
    assert writer.log_dir == logger.log_dir
    assert writer.metrics_file_path == os.path.join(logger.log_dir, "metrics.csv")
    writer.log_metrics({"loss": 1.0}, step=0)
    writer.log_hparams({"lr": 0.1})
    writer.save()
    assert read_csv_metrics(writer.metrics_file_path) == {"loss": [(0, 1.0)]}
    assert json.loads((Path(logger.log_dir) / "hparams.json").read_text()) == {"lr": 0.1}


class FullDisk:
    """`open` for treadle.loggers.csv whose appends write part of their bytes, then fail with ENOSPC, as
    a disk that fills up mid-write does."""

    def __init__(self) -> None:
        self.full = True

    def __call__(self, path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        file = open(path, mode, *args, **kwargs)  # noqa: SIM115
        if mode != "ab" or not self.full:
            return file
        disk = self

        class Partial:
            def __enter__(self) -> Partial:
                return self

            def __exit__(self, *exc: object) -> None:
                file.close()

            def write(self, data: bytes) -> int:
                if disk.full:
                    file.write(data[: len(data) // 2])
                    file.flush()
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return file.write(data)

        return Partial()


def test_a_full_disk_names_the_file_and_leaves_whole_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import treadle.loggers.csv as csv_module

    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    logger.log_metrics({"loss": 1.0}, step=0)
    disk = FullDisk()
    monkeypatch.setattr(csv_module, "open", disk, raising=False)
    with pytest.raises(
        OSError, match=r"could not write 1 row\(s\) to .*metrics.csv: no space left on device"
    ) as caught:
        logger.log_metrics({"loss": 0.5}, step=1)
    assert (
        caught.value.errno == errno.ENOSPC and str(caught.value).count(os.fspath(metrics_file(logger))) == 1
    )
    assert metrics_file(logger).read_text() == "step,loss\n0,1.0\n"  # no torn row
    with pytest.raises(OSError, match=r"could not write 2 row\(s\)"):  # the failed row is still pending
        logger.log_metrics({"loss": 0.25}, step=2)
    assert metrics_file(logger).read_text() == "step,loss\n0,1.0\n"
    disk.full = False  # space was freed
    logger.save()
    assert metrics_file(logger).read_text() == "step,loss\n0,1.0\n1,0.5\n2,0.25\n"


def test_a_full_disk_while_widening_the_header_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import treadle.files

    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    logger.log_metrics({"loss": 1.0}, step=0)
    real_fdopen = os.fdopen

    def full_fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        file = real_fdopen(fd, *args, **kwargs)
        file.write = lambda data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        return file

    monkeypatch.setattr(treadle.files.os, "fdopen", full_fdopen)
    with pytest.raises(OSError, match=r"to .*metrics.csv: no space left on device"):
        logger.log_metrics({"acc": 0.5}, step=1)  # a new column: the file is rewritten
    with pytest.raises(OSError, match=r"could not write .*hparams.json: no space left on device"):
        logger.log_hyperparams({"lr": 0.1})
    monkeypatch.undo()
    assert metrics_file(logger).read_text() == "step,loss\n0,1.0\n"
    assert sorted(p.name for p in Path(logger.log_dir).iterdir()) == ["metrics.csv"]  # no temp file left
    logger.save()
    assert metrics_file(logger).read_text() == "step,acc,loss\n0,,1.0\n1,0.5,\n"


def test_a_full_disk_during_a_merge_into_the_last_row_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import treadle.loggers.csv as csv_module

    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    logger.log_metrics({"loss": 1.0, "lr": 0.1}, step=0)
    logger.log_metrics({"loss": 0.5}, step=1)
    disk = FullDisk()
    monkeypatch.setattr(csv_module, "open", disk, raising=False)
    with pytest.raises(OSError, match="no space left on device"):
        logger.log_metrics({"lr": 0.05}, step=1)  # rewrites the last line with both values
    assert metrics_file(logger).read_text() == "step,loss,lr\n0,1.0,0.1\n"  # whole rows only
    disk.full = False
    logger.save()
    assert metrics_file(logger).read_text() == "step,loss,lr\n0,1.0,0.1\n1,0.5,0.05\n"
