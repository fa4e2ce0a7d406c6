from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from treadle.optional import require


def test_returns_the_module() -> None:
    assert require("json", extra="plot", feature="treadle plot") is json


def test_missing_module_names_the_feature_and_the_install_command() -> None:
    with pytest.raises(ModuleNotFoundError) as caught:
        require("treadle_no_such_module", extra="plot", feature="treadle plot")
    assert str(caught.value) == (
        "treadle plot needs `treadle_no_such_module`, which is not installed. "
        "Install it with: pip install 'treadle[plot]'"
    )
    assert isinstance(caught.value, ImportError)
    assert caught.value.name == "treadle_no_such_module"


def test_missing_parent_package_of_a_dotted_name() -> None:
    with pytest.raises(
        ModuleNotFoundError, match=r"^TB needs `treadle_no_such_pkg.sub`.*'treadle\[tensorboard\]'$"
    ):
        require("treadle_no_such_pkg.sub", extra="tensorboard", feature="TB")


def test_module_blocked_in_sys_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "treadle_blocked", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'treadle\[progress\]'"):
        require("treadle_blocked", extra="progress", feature="progress bar")


def test_a_broken_install_is_not_blamed_on_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The module exists but one of its own dependencies is missing: installing the extra would not help,
    # so the original error comes through.
    (tmp_path / "treadle_half_installed.py").write_text("import treadle_its_missing_dependency\n")
    monkeypatch.syspath_prepend(tmp_path)
    with pytest.raises(ModuleNotFoundError) as caught:
        require("treadle_half_installed", extra="plot", feature="treadle plot")
    assert caught.value.name == "treadle_its_missing_dependency"
    assert "pip install" not in str(caught.value)
