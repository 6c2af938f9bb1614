"""A throwaway PostgreSQL server for the tests: `initdb` into a temporary folder, listening on a Unix
socket in it only (no TCP port to collide with), a fresh database for each test, stopped and deleted
at the end of the session.

PostgreSQL refuses to run as root, and the tests run as root here and in CI: then its commands run
as the `postgres` user that Debian's package makes, which owns the folder.
"""

from __future__ import annotations

import getpass
import glob
import itertools
import os
import re
import shutil
import subprocess
import tempfile

import psycopg


def bin_dir() -> str | None:
    """The folder of the newest installed server's `initdb` and `pg_ctl`, or None when there is none."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if found:
        newest = max(found, key=lambda p: [int(n) for n in re.findall(r"\d+", p)])
        return os.path.dirname(newest)
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


_PREFIX = "llmaas-pg-"
_OWNER = "owner.pid"  # the test process that started the server


def _alive(pid: int) -> bool:
    """Whether the process runs (an exited one not yet reaped, a zombie, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class PgServer:
    def __init__(self, bin_path: str) -> None:
        self._bin = bin_path
        as_root = os.geteuid() == 0
        self._prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
        self.stop_abandoned()
        # /tmp, not pytest's folder: the postgres user must reach it, and a socket's path is short.
        self.root = tempfile.mkdtemp(prefix=_PREFIX, dir="/tmp")
        with open(os.path.join(self.root, _OWNER), "w") as f:
            f.write(str(os.getpid()))
        self.data, self.socket_dir = os.path.join(self.root, "data"), os.path.join(self.root, "s")
        os.mkdir(self.socket_dir)
        self.user = "postgres" if as_root else getpass.getuser()
        if as_root:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.socket_dir, "postgres")
        self._names = itertools.count()
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", self.user, "-E", "UTF8", "--locale=C", "--no-sync")
        # Durability of the server's own files is not under test: no fsync, for speed.
        options = f"-c listen_addresses='' -k {self.socket_dir} -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", self.data, "-w", "-l", os.path.join(self.root, "log"), "-o", options, "start")

    def stop_abandoned(self) -> None:
        """Stops and deletes the servers of test runs that were killed before they could (their owner
        process is gone), which would otherwise run on."""
        for root in glob.glob(os.path.join("/tmp", _PREFIX + "*")):
            try:
                with open(os.path.join(root, _OWNER)) as f:
                    owner = int(f.read())
            except (OSError, ValueError):
                continue  # not one of ours, or still starting
            if _alive(owner):
                continue
            data = os.path.join(root, "data")
            if os.path.exists(os.path.join(data, "postmaster.pid")):
                subprocess.run([*self._prefix, os.path.join(self._bin, "pg_ctl"), "-D", data, "-m", "immediate",
                                "stop"], capture_output=True, timeout=60)
            shutil.rmtree(root, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self._prefix, os.path.join(self._bin, tool), *args], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            log = os.path.join(self.root, "log")
            tail = open(log).read()[-2000:] if os.path.exists(log) else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()}\n{tail}")

    def url(self, dbname: str) -> str:
        return f"postgresql:///{dbname}?host={self.socket_dir}&user={self.user}"

    def admin(self, sql: str) -> None:
        """One statement on the server's own database (CREATE DATABASE, DROP DATABASE)."""
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def new_database(self) -> str:
        """The URL of an empty database of its own."""
        name = f"t{next(self._names)}"
        self.admin(f"CREATE DATABASE {name} STRATEGY FILE_COPY")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
