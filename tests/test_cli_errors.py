"""Bad input gets one clear error line (what is wrong, how to fix it) before any work starts, never a
traceback: worker counts, a truncated / corrupt / foreign results.sqlite, --out naming a file.

The CLI runs as a subprocess (``python -m xaudit.cli``, the same ``main`` as the ``xaudit`` script) on
a fake preset (tests/run_fakes.py), so nothing trains; $XAUDIT_TEST_LOG shows that no cell ran.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import xaudit.api as xapi
from xaudit.core.errors import ConfigError, StoreError, XauditError
from xaudit.run.store import Store

TESTS = Path(__file__).resolve().parent
PRESET = {"name": "fake", "plugins": ["run_fakes"], "seeds": [0], "worlds": [{"world": "shapes", "size": 32}],
          "checks": {"fake_score": {}}, "methods": ["saliency"]}


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (TESTS, TESTS.parent))), "XAUDIT_TEST_LOG": str(tmp_path / "log.jsonl"),
            "XAUDIT_CACHE": str(tmp_path / "cache")}


@pytest.fixture
def preset(tmp_path):
    path = tmp_path / "fake.yaml"
    path.write_text(yaml.safe_dump(PRESET))
    return path


def xaudit(tmp_path, env, *args):
    return subprocess.run([sys.executable, "-m", "xaudit.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)


def assert_clean_error(r, *needles):
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "Traceback" not in out, out
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def corrupt_store(tmp_path, kind: str) -> tuple[Path, bytes]:
    """A run directory whose results.sqlite is broken in the way ``kind`` says; returns it and its bytes."""
    real = tmp_path / "real" / "results.sqlite"
    Store(real).close()
    data = {"truncated": real.read_bytes()[:100],
            "garbage": b"\x00not an sqlite file\xff" * 40}.get(kind)
    run_dir = tmp_path / f"runs_{kind}"
    run_dir.mkdir()
    db = run_dir / "results.sqlite"
    if kind == "foreign":                       # a valid SQLite file of some other program
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE notes (x TEXT)")
        con.commit()
        con.close()
    else:
        db.write_bytes(data)
    return run_dir, db.read_bytes()


REASON = {"truncated": "malformed", "garbage": "not a database", "foreign": "without the xaudit tables"}


# ------------------------------------------------------------------------------- --workers
@pytest.mark.parametrize("workers", ["0", "-3"])
def test_cli_refuses_bad_worker_counts(tmp_path, env, preset, workers):
    r = xaudit(tmp_path, env, "run", preset, "--out", tmp_path / "out", "--workers", workers)
    line = assert_clean_error(r, "--workers", "must be an integer >= 1", "number of cores", f"got {workers}")
    assert "here" in line
    assert not (tmp_path / "out").exists()          # refused before anything was written
    assert not (tmp_path / "log.jsonl").exists()


@pytest.mark.parametrize("workers", [0, -3, 1.5, True, "2"])
def test_api_refuses_bad_worker_counts(tmp_path, workers):
    with pytest.raises(ConfigError) as e:
        xapi.run(dict(PRESET, plugins=[]), out=tmp_path / "out", workers=workers, progress=False)
    assert e.value.field == "--workers"
    assert "must be an integer >= 1 (default: the number of cores" in str(e.value)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- corrupt results.sqlite
@pytest.mark.parametrize("kind", ["truncated", "garbage", "foreign"])
@pytest.mark.parametrize("command", ["run", "results", "report"])
def test_cli_corrupt_store_is_named_and_left_alone(tmp_path, env, preset, command, kind):
    run_dir, before = corrupt_store(tmp_path, kind)
    args = ("run", preset, "--out", run_dir, "--workers", "1") if command == "run" else (command, run_dir)
    r = xaudit(tmp_path, env, *args)
    assert_clean_error(r, str(run_dir / "results.sqlite"), "is not a readable xaudit results store", REASON[kind],
                       "move it away", "nothing was changed")
    assert (run_dir / "results.sqlite").read_bytes() == before
    assert not (run_dir / "report.html").exists()
    assert not (tmp_path / "log.jsonl").exists()    # no cell ran


@pytest.mark.parametrize("kind", ["truncated", "garbage", "foreign"])
@pytest.mark.parametrize("readonly", [True, False])
def test_store_open_refuses_corrupt_file_unchanged(tmp_path, kind, readonly):
    run_dir, before = corrupt_store(tmp_path, kind)
    with pytest.raises(StoreError) as e:
        Store.open(run_dir, readonly=readonly)
    assert REASON[kind] in str(e.value)
    assert e.value.path == run_dir / "results.sqlite"
    assert (run_dir / "results.sqlite").read_bytes() == before


def test_store_opens_new_and_real_stores(tmp_path):
    Store.open(tmp_path / "new").close()                        # a new store is created
    Store.open(tmp_path / "new", readonly=True).close()          # and reads back
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "results.sqlite").write_bytes(b"")
    Store.open(tmp_path / "empty").close()                      # an empty file becomes a new store
    with pytest.raises(StoreError, match="empty"):
        (tmp_path / "empty2").mkdir()
        (tmp_path / "empty2" / "results.sqlite").write_bytes(b"")
        Store.open(tmp_path / "empty2", readonly=True)


def test_api_corrupt_store_raises_before_work(tmp_path, monkeypatch):
    monkeypatch.setenv("XAUDIT_TEST_LOG", str(tmp_path / "log.jsonl"))
    monkeypatch.syspath_prepend(str(TESTS))
    run_dir, before = corrupt_store(tmp_path, "truncated")
    with pytest.raises(StoreError):
        xapi.run(PRESET, out=run_dir, workers=1, source="run_fakes:FakeSource", cache_dir=tmp_path / "cache",
                 progress=False)
    assert (run_dir / "results.sqlite").read_bytes() == before
    assert not (tmp_path / "log.jsonl").exists()


# ------------------------------------------------------------------------------- --out a file
def test_cli_out_naming_a_file(tmp_path, env, preset):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    r = xaudit(tmp_path, env, "run", preset, "--out", target, "--workers", "1")
    assert_clean_error(r, "--out", str(target), "is an existing file, not a directory")
    assert target.read_text() == "keep me"
    r = xaudit(tmp_path, env, "run", preset, "--out", target / "sub", "--workers", "1")
    assert_clean_error(r, "--out", f"{target} (a parent of {target / 'sub'})", "existing file")
    assert target.read_text() == "keep me"
    assert not (tmp_path / "log.jsonl").exists()


def test_errors_are_xaudit_errors():
    assert issubclass(StoreError, XauditError) and issubclass(ConfigError, XauditError)
