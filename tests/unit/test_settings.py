"""Settings read from the environment."""

from __future__ import annotations

from shoal.infra.settings import Settings


def test_a_relative_data_dir_is_made_absolute_at_start(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Settings(data_dir=".shoal").data_dir == tmp_path / ".shoal"
