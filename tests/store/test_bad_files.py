"""Files the store must refuse: a clear error naming the file, and nothing written."""

import hashlib
import os
import sqlite3
import subprocess

import pytest

import hive_actors
from hive_actors.store import (
    SCHEMA_VERSION,
    DatabaseCorrupt,
    DatabaseError,
    DatabaseLocked,
    DatabaseReadOnly,
    ForeignDatabase,
    NotADatabase,
    SchemaTooNew,
    messages,
    open_store,
)
from hive_actors.store._engine import Engine


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def make_hive_db(path, tasks=50):
    engine, _, _ = Engine.open(path, clock=lambda: 1.0)
    engine.execute([messages.Submit("k", f"task {i}", "x" * 500) for i in range(tasks)])
    engine.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def open_engine(path, **kw):
    engine, _, _ = Engine.open(path, clock=lambda: 2.0, **kw)
    engine.close()


def assert_refused(path, error_type, *phrases):
    before = digest(path)
    with pytest.raises(error_type) as info:
        open_engine(path, busy_timeout=0.2)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for phrase in phrases:
        assert phrase in message
    assert digest(path) == before  # nothing written
    return info.value


def test_text_file_is_not_a_database(tmp_path):
    path = str(tmp_path / "notes.db")
    with open(path, "w") as f:
        f.write("these are my notes, not a database\n" * 10)
    assert_refused(path, NotADatabase, "not a SQLite database", "move the file away")
    assert not os.path.exists(path + "-wal")


def test_truncated_sqlite_header(tmp_path):
    path = str(tmp_path / "short.db")
    with open(path, "wb") as f:
        f.write(b"SQLite format 3\x00" + b"\x00" * 10)
    assert_refused(path, DatabaseCorrupt, "truncated")


def test_corrupt_pages(tmp_path):
    path = str(tmp_path / "corrupt.db")
    make_hive_db(path)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        page = 4096
        f.seek(page)
        f.write(bytes([0xA5]) * (size - page))  # every page after the first is garbage
    error = assert_refused(path, (DatabaseCorrupt, NotADatabase))
    assert "backup" in str(error) or "move" in str(error)


def test_another_applications_database(tmp_path):
    path = str(tmp_path / "app.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.commit()
    conn.close()
    assert_refused(path, ForeignDatabase, "another application", "users")


def test_foreign_application_id(tmp_path):
    path = str(tmp_path / "other.db")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id = 1234")
    conn.commit()
    conn.close()
    assert_refused(path, ForeignDatabase, "application_id 0x4d2")


def test_newer_schema_is_refused(tmp_path):
    path = str(tmp_path / "future.db")
    make_hive_db(path)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    assert_refused(path, SchemaTooNew, f"schema version {SCHEMA_VERSION + 1}", "Upgrade")


def test_locked_database(tmp_path):
    path = str(tmp_path / "busy.db")
    make_hive_db(path, tasks=1)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        error = assert_refused(path, DatabaseLocked, "locked", "busy_timeout")
        assert isinstance(error, DatabaseError)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_missing_directory(tmp_path):
    path = str(tmp_path / "nowhere" / "hive.db")
    with pytest.raises(DatabaseError, match="does not exist"):
        open_engine(path)
    assert not os.path.exists(os.path.dirname(path))


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(NotADatabase, match="directory"):
        open_engine(str(tmp_path))


def test_read_only_database(tmp_path):
    path = str(tmp_path / "ro.db")
    make_hive_db(path, tasks=3)
    if os.geteuid() != 0:
        os.chmod(path, 0o444)
        undo = ["chmod", "0644", path]
    else:
        # Root ignores file modes; the immutable attribute stops root too.
        made = subprocess.run(["chattr", "+i", path], capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"cannot make a file read-only for root here: {made.stderr.strip()}")
        undo = ["chattr", "-i", path]
    try:
        assert_refused(path, DatabaseReadOnly, "not writable", "writable by this user")
    finally:
        subprocess.run(undo, check=True)


@pytest.fixture
def junk_db(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"\x00\x01junk" * 100)
    return path


async def test_open_store_raises_the_clear_error(junk_db):
    path = junk_db
    async with hive_actors.open_actor_system() as system:
        with pytest.raises(NotADatabase, match="junk.db"):
            async with open_store(system, str(path)):
                raise AssertionError("must not open")
        assert system.lookup("store") is None
