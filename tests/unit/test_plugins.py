"""Plug-in names (`module:Name`): parsing, one-line import errors, declarations read from source."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from pfl_dist import plugins
from pfl_dist.errors import ConfigError


@pytest.mark.parametrize("text", ["mod:Name", "pkg.sub.mod:factory", "_m:_f"])
def test_plugin_names_are_a_module_path_a_colon_and_a_name(text: str) -> None:
    assert plugins.is_plugin_name(text)
    name = plugins.parse(text, key="algorithm.name")
    assert str(name) == text


@pytest.mark.parametrize("text", ["fedavg", "topk:0.01", "mod:", ":Name", "a..b:C", "mod:Na-me", "class:X",
                                  "mod:Name:extra", "1mod:X"])
def test_other_strings_are_not_plugin_names(text: str) -> None:
    assert not plugins.is_plugin_name(text)
    with pytest.raises(ConfigError, match=r"^algorithm\.name .* is not a plug-in name"):
        plugins.parse(text, key="algorithm.name")


@pytest.fixture
def user_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "good_plugin.py").write_text(textwrap.dedent("""
        class Info:
            def __init__(self, *args, **kwargs):
                self.args, self.kwargs = args, kwargs

        class Mine:
            info = Info("mine", "Mine", uses_lam=True, colors="#112233")

        class Computed:
            info = Info("x" + "y")

        def factory():
            return 42
    """))
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('bad things\\nsecond line')\n")
    (tmp_path / "importing_plugin.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("good_plugin", "broken_plugin", "importing_plugin"):
        sys.modules.pop(name, None)


def test_load_returns_the_named_attribute(user_modules: Path) -> None:
    factory = plugins.load(plugins.parse("good_plugin:factory", key="model.kind"), key="model.kind")
    assert factory() == 42


@pytest.mark.parametrize(("text", "message"), [
    ("no_such_module_xyz:Thing", r"^model\.kind=no_such_module_xyz:Thing: cannot import no_such_module_xyz: .*"
                                 r"\(is its folder on PYTHONPATH\?\)$"),
    ("importing_plugin:Thing", r"^model\.kind=importing_plugin:Thing: cannot import importing_plugin: No module "
                               r"named 'no_such_dependency_xyz'$"),
    ("broken_plugin:Thing", r"^model\.kind=broken_plugin:Thing: importing broken_plugin failed: RuntimeError: "
                            r"bad things$"),
    ("good_plugin:Missing", r"^model\.kind=good_plugin:Missing: module good_plugin has no 'Missing'$"),
])
def test_load_failures_are_one_line_naming_the_key(user_modules: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        plugins.load(plugins.parse(text, key="model.kind"), key="model.kind")
    assert "\n" not in str(caught.value)


def test_declarations_are_read_from_source_without_running_it(user_modules: Path) -> None:
    path = plugins.source_path("good_plugin")
    assert path == user_modules / "good_plugin.py"
    assert "good_plugin" not in sys.modules  # found, not imported
    calls = plugins.class_declaration(path, "info")
    assert sorted(calls) == ["Computed", "Mine"]
    args, kwargs = plugins.literal_call(calls["Mine"], where="good_plugin:Mine")
    assert args == ["mine", "Mine"] and kwargs == {"uses_lam": True, "colors": "#112233"}
    with pytest.raises(ValueError, match="good_plugin:Computed: the declaration must use literal values only"):
        plugins.literal_call(calls["Computed"], where="good_plugin:Computed")


def test_a_module_without_a_source_file_has_no_source_path() -> None:
    assert plugins.source_path("no_such_module_xyz") is None
    assert plugins.source_path("sys") is None  # built into the interpreter
