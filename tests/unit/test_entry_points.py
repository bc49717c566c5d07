"""Plugins from the ``conveyor`` entry-point group: autoload, blocking, and load errors."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest

from conveyor import Conveyor, PluginError


def install_fake_distribution(root: Path, module_body: str) -> None:
    """A minimal installed distribution (dist-info + module) on a path we prepend. The module
    name is unique per test so an earlier test's import is not reused."""
    module = f"conveyor_fake_{uuid.uuid4().hex[:8]}"
    (root / f"{module}.py").write_text(textwrap.dedent(module_body))
    info = root / "conveyor_fake_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: conveyor-fake-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[conveyor]\nfake = {module}\n")


GOOD = """
    from conveyor import hookimpl

    @hookimpl
    def conveyor_engines(app, registry):
        registry.register_engine_factory("fake-engine", object, origin="conveyor-fake-plugin")
"""


@pytest.fixture
def fake_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CONVEYOR_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    return tmp_path


def test_entry_point_plugins_are_loaded(fake_dist: Path) -> None:
    install_fake_distribution(fake_dist, GOOD)
    app = Conveyor("sqlite:///:memory:")
    assert app.pm.get_plugin("fake") is not None
    assert "sql" in dict(app.pm.list_name_plugin())


def test_autoload_can_be_switched_off(fake_dist: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_distribution(fake_dist, GOOD)
    assert Conveyor("sqlite:///:memory:", plugin_autoload=False).pm.get_plugin("fake") is None
    monkeypatch.setenv("CONVEYOR_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert Conveyor("sqlite:///:memory:").pm.get_plugin("fake") is None


def test_an_entry_point_plugin_can_be_blocked_by_name(fake_dist: Path) -> None:
    install_fake_distribution(fake_dist, GOOD)
    app = Conveyor("sqlite:///:memory:", disable_plugins=["fake"])
    assert app.pm.get_plugin("fake") is None and app.pm.is_blocked("fake")


def test_a_broken_entry_point_names_its_package(fake_dist: Path) -> None:
    install_fake_distribution(fake_dist, "raise ImportError('missing dependency: frobnicate')\n")
    with pytest.raises(
        PluginError,
        match=r"'fake' from package 'conveyor-fake-plugin' failed to load: ImportError: missing dependency: frobnicate",
    ):
        Conveyor("sqlite:///:memory:")


def test_disable_plugins_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_DISABLE_PLUGINS", "sql, other")
    app = Conveyor("sqlite:///:memory:", plugin_autoload=False)
    assert app.settings.disable_plugins == ["sql", "other"] and app.pm.is_blocked("sql")
