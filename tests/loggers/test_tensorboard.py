from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from treadle.loggers import Logger, TensorBoardLogger

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2


def load(log_dir: str) -> EventAccumulator:
    accumulator = EventAccumulator(log_dir)
    accumulator.Reload()
    return accumulator


def test_is_a_logger_and_uses_the_csv_folder_convention(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name="exp", version=2)
    assert isinstance(logger, Logger)
    assert logger.log_dir == os.fspath(tmp_path / "exp" / "version_2")
    assert (logger.name, logger.version, logger.root_dir) == ("exp", 2, str(tmp_path))


def test_scalars_can_be_read_back(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, prefix="train")
    for step in range(5):
        logger.log_metrics({"loss": 1.0 / (step + 1), "lr": torch.tensor(0.1)}, step=step * 10)
    logger.finalize("success")

    assert Path(logger.log_dir) == tmp_path / "treadle_logs" / "version_0"
    assert any(p.name.startswith("events.out.tfevents") for p in Path(logger.log_dir).iterdir())
    events = load(logger.log_dir)
    assert sorted(events.Tags()["scalars"]) == ["train/loss", "train/lr"]
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [0, 10, 20, 30, 40]
    assert [e.value for e in loss] == pytest.approx([1.0, 0.5, 1 / 3, 0.25, 0.2])
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([0.1] * 5)


def test_calls_without_a_step_are_numbered(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    for value in (3.0, 2.0, 1.0):
        logger.log_metrics({"loss": value})
    logger.finalize("success")
    assert [(e.step, e.value) for e in load(logger.log_dir).Scalars("loss")] == [(0, 3.0), (1, 2.0), (2, 1.0)]


def test_versions_count_up(tmp_path: Path) -> None:
    first = TensorBoardLogger(tmp_path)
    first.log_metrics({"loss": 1.0}, step=0)
    first.finalize("success")
    second = TensorBoardLogger(tmp_path)
    second.log_metrics({"loss": 1.0}, step=0)
    second.finalize("success")
    assert (first.version, second.version) == (0, 1)


def test_hyperparams_are_recorded_for_the_hparams_tab(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    logger.log_hyperparams(
        {
            "lr": 0.1,
            "optimizer": {"name": "adamw", "eps": torch.tensor(1e-8)},
            "layers": [64, 32],
            "seed": None,
        }
    )
    logger.finalize("success")

    metadata = load(logger.log_dir).SummaryMetadata("_hparams_/session_start_info")
    assert metadata.plugin_data.plugin_name == "hparams"
    hparams = plugin_data_pb2.HParamsPluginData.FromString(
        metadata.plugin_data.content
    ).session_start_info.hparams
    assert hparams["lr"].number_value == pytest.approx(0.1)
    assert hparams["optimizer/name"].string_value == "adamw"
    assert hparams["optimizer/eps"].number_value == pytest.approx(1e-8)
    assert hparams["layers"].string_value == "[64, 32]"
    assert hparams["seed"].string_value == "None"
    assert [p.name for p in Path(logger.log_dir).iterdir() if p.is_dir()] == []  # no timestamped sub-run


def test_save_and_finalize_are_safe_before_and_after_use(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    logger.save()
    logger.finalize("failed")
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing created

    logger.log_metrics({"loss": 1.0}, step=0)
    logger.save()
    logger.finalize("success")
    logger.finalize("success")
    logger.log_metrics({"loss": 0.5}, step=1)  # reopens a new event file in the same folder
    logger.finalize("success")
    assert [(e.step, e.value) for e in load(logger.log_dir).Scalars("loss")] == [(0, 1.0), (1, 0.5)]


def test_a_logger_that_has_written_can_be_pickled_and_the_copy_writes_into_its_folder(tmp_path: Path) -> None:
    # Fabric(strategy="ddp_spawn") pickles its loggers, often after log_hyperparams has opened the writer.
    logger = TensorBoardLogger(tmp_path)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 1.0}, step=0)
    clone = pickle.loads(pickle.dumps(logger))
    assert clone.log_dir == logger.log_dir
    clone.log_metrics({"loss": 0.5}, step=1)
    clone.finalize("success")
    logger.log_metrics({"loss": 0.25}, step=2)  # the original's writer is untouched
    logger.finalize("success")
    points = sorted((e.step, e.value) for e in load(logger.log_dir).Scalars("loss"))
    assert points == [(0, 1.0), (1, 0.5), (2, 0.25)]


def test_a_pickled_logger_keeps_the_version_of_the_original(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    clone = pickle.loads(pickle.dumps(logger))
    (tmp_path / "treadle_logs" / "version_0").mkdir(parents=True)  # another run takes the next version
    assert (logger.version, clone.version) == (0, 0)
    assert list((tmp_path / "treadle_logs").iterdir()) == [tmp_path / "treadle_logs" / "version_0"]


def test_writer_arguments_are_checked_in_the_constructor(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, flush_secs=5, filename_suffix=".x")
    assert logger.experiment.flush_secs == 5
    logger.finalize("success")
    with pytest.raises(
        TypeError,
        match=r"TensorBoardLogger\(log_dir=...\) is not a SummaryWriter argument.*"
        r"Choose from: comment, purge_step.*pass root_dir=, name= and version=",
    ):
        TensorBoardLogger(tmp_path, log_dir="elsewhere")
    with pytest.raises(TypeError, match=r"TensorBoardLogger\(flush_sec=...\).*Choose from"):
        TensorBoardLogger(tmp_path, flush_sec=5)
    with pytest.raises(ValueError, match=r"TensorBoardLogger\(name=' '\) is only spaces"):
        TensorBoardLogger(tmp_path, name=" ")
    with pytest.raises(ValueError, match=r"TensorBoardLogger\(sub_dir='../x'\) must be a relative folder"):
        TensorBoardLogger(tmp_path, sub_dir="../x")
    with pytest.raises(TypeError, match=r"TensorBoardLogger\(log_graph=1\) must be True or False"):
        TensorBoardLogger(tmp_path, log_graph=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"TensorBoardLogger\(prefix=1\) must be a str"):
        TensorBoardLogger(tmp_path, prefix=1)  # type: ignore[arg-type]


def test_bad_values_name_the_metric(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    with pytest.raises(TypeError, match=r"TensorBoardLogger.log_metrics got metric 'loss' = None"):
        logger.log_metrics({"loss": None})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"TensorBoardLogger.log_metrics\(step='1'\) must be an int"):
        logger.log_metrics({"loss": 1.0}, step="1")  # type: ignore[arg-type]
    assert not tmp_path.joinpath("treadle_logs").exists()


def test_missing_tensorboard_gives_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # makes `import tensorboard` fail
    logger = TensorBoardLogger(tmp_path)  # constructing still works
    expected = (
        "TensorBoardLogger needs `tensorboard`, which is not installed. "
        "Install it with: pip install 'treadle[tensorboard]'"
    )
    with pytest.raises(ModuleNotFoundError) as caught:
        logger.log_metrics({"loss": 1.0}, step=0)
    assert str(caught.value) == expected
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'treadle\[tensorboard\]'"):
        logger.log_hyperparams({"lr": 0.1})


def test_construction_does_not_import_tensorboard(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from treadle.loggers import TensorBoardLogger
        logger = TensorBoardLogger({os.fspath(tmp_path)!r}, prefix="train")
        print(logger.log_dir, logger.version)
        logger.save()
        logger.finalize("success")
        loaded = sorted(m for m in sys.modules if m.startswith(("tensorboard", "torch.utils.tensorboard")))
        assert not loaded, loaded
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []


def hparams_session(log_dir: str) -> tuple[dict[str, object], list[str]]:
    """The hparams recorded in ``log_dir`` and the metric names the HParams tab lists for them."""
    events = load(log_dir)
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    ).session_start_info.hparams
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        events.SummaryMetadata("_hparams_/experiment").plugin_data.content
    ).experiment
    values = {key: value.number_value or value.string_value for key, value in start.items()}
    return values, [info.name.tag for info in experiment.metric_infos]


def test_log_hyperparams_with_metrics_and_the_default_hp_metric(tmp_path: Path) -> None:
    with_results = TensorBoardLogger(tmp_path, version="results", prefix="hp")
    with_results.log_hyperparams({"lr": 0.1}, metrics={"val_acc": 0.9}, step=7)
    with_results.finalize("success")
    assert hparams_session(with_results.log_dir) == ({"lr": pytest.approx(0.1)}, ["hp/val_acc"])
    assert [(e.step, e.value) for e in load(with_results.log_dir).Scalars("hp/val_acc")] == [
        (7, pytest.approx(0.9))
    ]

    placeholder = TensorBoardLogger(tmp_path, version="placeholder")
    placeholder.log_hyperparams({"lr": 0.1})
    placeholder.log_metrics({"hp_metric": 0.5}, step=10)  # the run's result fills the placeholder in
    placeholder.finalize("success")
    assert hparams_session(placeholder.log_dir)[1] == ["hp_metric"]
    assert [e.value for e in load(placeholder.log_dir).Scalars("hp_metric")] == [-1.0, 0.5]

    plain = TensorBoardLogger(tmp_path, version="plain", default_hp_metric=False)
    plain.log_hyperparams({"lr": 0.1})
    plain.finalize("success")
    assert hparams_session(plain.log_dir) == ({"lr": pytest.approx(0.1)}, [])
    assert load(plain.log_dir).Tags()["scalars"] == []


def test_name_none_sub_dir_and_expanded_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TREADLE_TEST_RUNS", os.fspath(tmp_path))
    logger = TensorBoardLogger("$TREADLE_TEST_RUNS/tb", name=None, sub_dir="train")
    assert (logger.name, logger.sub_dir) == ("", "train")
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.finalize("success")
    assert logger.log_dir == os.fspath(tmp_path / "tb" / "version_0" / "train")
    assert [e.value for e in load(logger.log_dir).Scalars("loss")] == [1.0]
    assert TensorBoardLogger(tmp_path / "tb", name="").version == 1  # sub_dir does not hide version_0


def test_log_graph_draws_the_model_and_warns_without_an_input(tmp_path: Path) -> None:
    from treadle import Fabric

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3, 2)
            self.example_input_array = torch.zeros(1, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.layer(x))

    logger = TensorBoardLogger(tmp_path, log_graph=True)
    assert logger.log_graph_at_fit_start
    model = Fabric(accelerator="cpu").setup_module(Net())
    logger.log_graph(model)  # a set-up model; the input is its example_input_array
    logger.finalize("success")
    graph = load(logger.log_dir).Graph()
    assert any("Linear" in node.op or "linear" in node.op.lower() for node in graph.node)

    with pytest.warns(UserWarning, match="no example_input_array and no input_array"):
        TensorBoardLogger(tmp_path).log_graph(torch.nn.Linear(3, 2))
    with pytest.warns(UserWarning, match="input_array is a list"):
        TensorBoardLogger(tmp_path).log_graph(torch.nn.Linear(3, 2), [torch.zeros(1, 3)])


# TensorBoard's writer thread records its error for the next flush, then dies with it: pytest reports that.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_full_disk_names_the_folder_and_logging_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from tensorboard.summary.writer import record_writer

    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.save()
    real_write = record_writer.RecordWriter.write

    def full(self: Any, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    logger.log_metrics({"loss": 0.5}, step=1)  # queued: the writer's thread meets the full disk
    with pytest.raises(
        OSError, match=r"could not write its event file in .*version_0: no space left on device"
    ):
        logger.save()
    monkeypatch.setattr(record_writer.RecordWriter, "write", real_write)  # space was freed
    logger.log_metrics({"loss": 0.25}, step=2)  # a new event file in the same folder
    logger.finalize("success")
    assert [(e.step, e.value) for e in load(logger.log_dir).Scalars("loss")] == [(0, 1.0), (2, 0.25)]
