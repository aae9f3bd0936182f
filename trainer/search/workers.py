"""Several `trainer search` workers (one per machine) on one study in a database server.

With an SQLite file one search runs a study (study.lock_study). With a server URL (PostgreSQL) any
number of workers share it, and the database decides what they share:
- the schema and the study are created under a PostgreSQL advisory lock, so workers started together
  on an empty database do not race for CREATE TYPE / CREATE TABLE;
- a trial is reserved under the study's advisory lock: count the study's finished and running trials,
  then create the new one, so maxTrialCount holds across workers (maxFailedTrialCount and the goal
  are read from the whole study anyway);
- Optuna's heartbeat (RDBStorage heartbeat_interval/grace_period): each running trial's worker beats;
  a worker that checks for new trials fails a trial whose beat stopped (its machine died) and queues it
  again, as Katib would retry a pod: the stale trial counts toward neither the budget nor the failures;
- pool_pre_ping, which Optuna turns on for MySQL only: a connection the server or a firewall dropped
  is replaced instead of failing the search.
Each worker's sampler gets its own seed (random_state mixed with its host and pid), else all of
them would suggest the same points.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import socket
import threading

import optuna

from trainer import install_hint
from trainer.errors import UsageError, first_line

HEARTBEAT_ENV = "TRAINER_SEARCH_HEARTBEAT"  # seconds between a trial's heartbeats (default 10)
GRACE_BEATS = 3  # a trial whose worker missed this many beats is stale
DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}  # SQLAlchemy's default is psycopg2
_opened: dict[str, optuna.storages.RDBStorage] = {}  # URL -> the storage this process opened


def is_server(url: str) -> bool:
    return "://" in url and not url.startswith("sqlite:")


def checked_url(url) -> str:
    """--storage as a database URL, or one line: a bare path (an Optuna journal file, a typo) is refused,
    because the shared budget and the schema are reserved with the database's locks."""
    url = str(url)
    if "://" not in url:
        raise UsageError(f"--storage={url!r} is not a database URL: use sqlite:///FILE.db (one machine) or "
                         "postgresql://USER:PASSWORD@HOST/DB (several); Optuna's journal files are not supported "
                         "(the shared trial budget is reserved with the database's locks)")
    return url


def driver_url(url: str) -> str:
    """postgresql://... names psycopg 3, the driver of the postgres extra (SQLAlchemy would want psycopg2)."""
    scheme, sep, rest = url.partition("://")
    return f"{DRIVERS.get(scheme, scheme)}{sep}{rest}"


def shown(url: str) -> str:
    """The URL as printed: its password masked."""
    return re.sub(r"(://[^:/@]*:)[^/]*@", r"\1***@", url)  # to the last @ before the path


def heartbeat_s() -> int:
    text = os.environ.get(HEARTBEAT_ENV, "10")
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"{HEARTBEAT_ENV}={text!r}: seconds between heartbeats, a whole number >= 1")
    return int(text)


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna's heartbeat failed `trial` (its worker went silent): run it again, as recover() reruns an
    Interrupted trial, with its name; the worker that takes it records the dead one's host."""
    study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number,
                                                  "trial_name": trial.user_attrs.get("trial_name"),
                                                  "stale_host": trial.system_attrs.get("search_host")})


def storage(url: str):
    """What optuna.create_study gets: the URL for SQLite, an RDBStorage with heartbeat and pre-ping
    for a server (created under the schema lock)."""
    if not is_server(url):
        return url
    if url not in _opened:
        beat = heartbeat_s()
        try:
            with schema_lock(url):
                _opened[url] = optuna.storages.RDBStorage(
                    driver_url(url), engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=beat,
                    grace_period=GRACE_BEATS * beat, heartbeat_stale_trial_callback=requeue)
        except ImportError:
            raise UsageError(f"--storage {shown(url)}: its database driver is not installed: "
                             f"{install_hint('postgres')} (psycopg 3)") from None
        except Exception as error:  # sqlalchemy's OperationalError and kin: no server, wrong password
            raise UsageError(f"--storage {shown(url)}: {shown(first_line(error))}") from None
    return _opened[url]


def database_error(error: BaseException) -> BaseException | None:
    """The database's own error (SQLAlchemy's or the driver's) behind `error`, else None. Optuna wraps
    it in StorageInternalError, whose words ("invalid data in the commit") would mislead."""
    while error is not None:
        if type(error).__module__.split(".")[0] in ("sqlalchemy", "psycopg", "psycopg2"):
            return error
        error = error.__cause__ if isinstance(error, optuna.exceptions.StorageInternalError) else None
    return None


def lock_key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def advisory_lock(engine, name: str):
    """PostgreSQL's transaction advisory lock NAME, held for the with block (released when its
    connection ends, so a killed worker holds nothing); other databases: no lock."""
    if engine.dialect.name != "postgresql":
        yield
        return
    import sqlalchemy

    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(name)})
        yield


@contextlib.contextmanager
def schema_lock(url: str):
    import sqlalchemy

    engine = sqlalchemy.create_engine(driver_url(url), poolclass=sqlalchemy.pool.NullPool)
    try:
        with advisory_lock(engine, "trainer search: schema"):
            yield
    finally:
        engine.dispose()


@contextlib.contextmanager
def study_lock(plan):
    """Held while this worker creates or reserves trials of the study (nothing for SQLite: one search)."""
    opened = _opened.get(plan.storage)
    if opened is None:
        yield
        return
    with advisory_lock(opened.engine, f"trainer search: study {plan.experiment.name}"):
        yield


class Heartbeat:
    """Beats for a running trial until join(), as Optuna's HeartbeatThread (optuna.study._optimize), but
    a beat the database misses (a restart, a dropped connection) is retried at the next one instead of
    ending the thread with a traceback; a daemon thread, so it never holds the search at exit."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial):
        from optuna.storages._heartbeat import is_heartbeat_enabled  # as optuna.study._optimize uses it

        self.stop = threading.Event()
        storage = study._storage
        interval = storage.get_heartbeat_interval() if is_heartbeat_enabled(storage) else None
        self.thread = threading.Thread(target=self.beat, args=(storage, trial._trial_id, interval), daemon=True)
        if interval:
            self.thread.start()

    def beat(self, storage, trial_id: int, interval: int) -> None:
        while True:
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial_id)
            if self.stop.wait(interval):
                return

    def join(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


def fail_stale(study: optuna.Study) -> None:
    optuna.storages.fail_stale_trials(study)  # does nothing without a heartbeat (SQLite here)


def worker() -> str:
    return f"{socket.gethostname()}/{os.getpid()}"


def worker_algorithm(algorithm):
    """The Experiment's algorithm with this worker's seed: random_state mixed with host and pid."""
    settings = dict(algorithm.settings)
    if "random_state" not in settings:
        return algorithm, None
    seed = lock_key(f"{settings['random_state']}|{worker()}") % 2**31
    return dataclasses.replace(algorithm, settings={**settings, "random_state": str(seed)}), seed


def describe(plan, seed: int | None) -> str:
    sampling = (f"samples with seed {seed} (random_state mixed with this host and pid)" if seed is not None
                else "samples with its own random seed (the Experiment sets no random_state)")
    return (f"  workers: {shown(plan.storage)} is shared: maxTrialCount and maxFailedTrialCount count every worker's "
            f"trials, parallelTrialCount ({plan.parallel}) is per worker; this worker ({worker()}) {sampling}: "
            f"a shared search is not bit-reproducible; a trial whose worker dies is run again by another after "
            f"{GRACE_BEATS * heartbeat_s()} s, from scratch unless its folder is on shared storage")
