"""A throwaway local ``redis-server`` for tests and replays: real Redis semantics, no shared instance to clean up.

:class:`LocalRedisServer` runs the installed ``redis-server`` binary in the foreground on a free loopback port with
persistence off (``--save "" --appendonly no``), so nothing it holds outlives it. Readiness is the server's own
"Ready to accept connections" log line read from its stdout, not a sleep or a PING poll: the line is printed after
the listening socket is bound, so a client connecting afterwards never races the start. The same reader thread keeps
draining stdout for the server's lifetime (a full pipe would stall the server) and keeps the last lines for errors.

The free port comes from binding port 0 and closing the socket, so another process can take it before Redis binds
it; Redis then logs "Address already in use" and exits, and the start is retried on a fresh port.

``extra_args`` are appended to the command line and override the defaults (Redis takes the last value of a
directive), e.g. ``("--appendonly", "yes", "--appendfsync", "always")`` for a crash test that restarts the server on
the same ``directory`` and finds its data again, or ``("--requirepass", "secret")``. :meth:`kill` ends the server
with SIGKILL (a crash: no shutdown, no save).

:class:`LocalRedisCluster` is a real Redis Cluster of such servers (``cluster=True``: cluster mode, its bus on a
second free port chosen with the client port at each start attempt), one directory each, joined by
``redis-cli --cluster create`` (all primaries, no replicas). It is ready once every node's ``CLUSTER INFO`` says
``cluster_state:ok`` and knows every other node (polled, with a deadline).
"""

from __future__ import annotations

import collections
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

READY_LINE = "Ready to accept connections"
ADDRESS_IN_USE = "Address already in use"


class LocalRedisError(RuntimeError):
    """The local redis-server could not be started; the message carries its output."""


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the OS picks it for a port-0 bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalRedisServer:
    """A ``redis-server`` child process on ``127.0.0.1``, started on ``__enter__`` and shut down on ``__exit__``.

    ``directory`` is the server's ``--dir`` (its working directory; nothing is saved there with persistence off).
    ``startup_timeout`` bounds each start attempt; ``attempts`` is how many fresh ports are tried when the chosen one
    was taken in the meantime. ``cluster`` starts the server in cluster mode (its node file in ``directory``, its bus
    on another free port), to be joined into a cluster by :class:`LocalRedisCluster`.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        binary: str = "redis-server",
        startup_timeout: float = 15.0,
        attempts: int = 5,
        extra_args: Sequence[str] = (),
        cluster: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.attempts = attempts
        self.extra_args = tuple(extra_args)
        self.cluster = cluster
        self._port: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()
        self._ready_seen = False
        self._output: collections.deque[str] = collections.deque(maxlen=200)

    # --- public -----------------------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None or self._proc is None:
            raise LocalRedisError("the local redis-server is not running (use it as a context manager or call start())")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def output(self) -> str:
        """The last lines the server printed (for error messages and debugging)."""
        return "".join(self._output)

    def start(self) -> LocalRedisServer:
        """Start the server and return once it accepts connections; raise :class:`LocalRedisError` otherwise."""
        if self._proc is not None:
            raise LocalRedisError(f"the local redis-server is already running on port {self._port}")
        exe = shutil.which(self.binary)
        if exe is None:
            raise LocalRedisError(
                f"{self.binary!r} not found on PATH: install redis-server (apt-get install redis-server)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(self.attempts):
            try:
                started = self._start_once(exe, free_port())
            except BaseException:
                self.stop()  # an interrupt while waiting must not leave a server behind
                raise
            if started:
                return self
        raise LocalRedisError(
            f"redis-server could not bind a free port in {self.attempts} attempts; last output:\n{self.output}"
        )

    def stop(self) -> None:
        """Shut the server down without saving; terminate, then kill, if it does not exit. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            self._shutdown_nosave()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _terminate(proc)
        proc.wait()
        self._join_reader()

    def kill(self) -> None:
        """End the server with SIGKILL, as a crash would: no shutdown, no save. :meth:`start` starts it again (on a
        new port) with the same directory, so an append-only file written there is loaded back."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait()
        self._join_reader()

    def __enter__(self) -> LocalRedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- internals --------------------------------------------------------------------------------------------------
    def _start_once(self, exe: str, port: int) -> bool:
        """One start attempt; False when the port was taken meanwhile (the caller retries), raises on anything else."""
        self._ready.clear()
        self._ready_seen = False
        self._output.clear()
        args = [
            exe,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "no",
            *(self._cluster_args(port) if self.cluster else ()),
            *self.extra_args,
        ]  # fmt: skip
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        reader = threading.Thread(target=self._drain, args=(proc,), name=f"redis-server-{port}-stdout", daemon=True)
        reader.start()
        self._proc, self._reader, self._port = proc, reader, port

        # The reader thread sets the event on the ready line and at end of output (the server exited).
        if not self._ready.wait(timeout=self.startup_timeout):
            self._proc = None
            _terminate(proc)
            self._join_reader()
            raise LocalRedisError(
                f"redis-server on port {port} not ready after {self.startup_timeout:.0f} s; output:\n{self.output}"
            )
        if self._ready_seen:
            return True
        self._proc = None
        proc.wait()
        self._join_reader()
        if ADDRESS_IN_USE in self.output:
            return False
        raise LocalRedisError(
            f"redis-server exited with code {proc.returncode} before it was ready; output:\n{self.output}"
        )

    @staticmethod
    def _cluster_args(port: int) -> tuple[str, ...]:
        """Cluster mode with the bus on its own free port: the default (port + 10000) may be taken or above 65535.
        A bus port taken meanwhile also logs "Address already in use", so the retry draws both ports again."""
        bus = free_port()
        while bus == port:
            bus = free_port()
        return ("--cluster-enabled", "yes", "--cluster-port", str(bus), "--cluster-config-file", "nodes.conf")

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        """Read the server's stdout to its end: flags readiness, keeps the tail, and keeps the pipe from filling."""
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                self._output.append(line)
                if not self._ready_seen and READY_LINE in line:
                    self._ready_seen = True
                    self._ready.set()
        self._ready.set()

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None

    def _password(self) -> str | None:
        return _last_value(self.extra_args, "--requirepass") or None

    def _shutdown_nosave(self) -> None:
        import redis  # the core's only use of redis-py; imported here so importing darkroom stays light
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries: the connection dropping is SHUTDOWN succeeding, and redis-py's default retries would reconnect
        # to a closed port with backoff for seconds.
        client = redis.Redis(
            host="127.0.0.1",
            port=self._port or 0,
            socket_timeout=5,
            socket_connect_timeout=5,
            retry=Retry(NoBackoff(), 0),
            password=self._password(),
        )
        try:
            client.shutdown(nosave=True)
        except redis.RedisError:
            pass  # not answering: stop() falls back to SIGTERM / SIGKILL
        finally:
            client.close()


class LocalRedisCluster:
    """A Redis Cluster of ``primaries`` (at least 3, the minimum ``redis-cli --cluster create`` accepts) cluster-mode
    :class:`LocalRedisServer` nodes, no replicas, started on ``__enter__`` and shut down on ``__exit__``.

    Each node runs in ``directory / node<i>`` with persistence off. The slots are assigned by
    ``redis-cli --cluster create``; :meth:`start` returns once every node reports ``cluster_state:ok`` and knows all
    the others (``CLUSTER INFO``, polled until ``startup_timeout``). :attr:`url` names the first node, from which a
    cluster client discovers the rest; :attr:`nodes` are the servers, for per-node checks (``SCAN``, ``FLUSHALL``).
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        primaries: int = 3,
        binary: str = "redis-server",
        cli: str = "redis-cli",
        startup_timeout: float = 30.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        if primaries < 3:
            raise ValueError(f"a Redis Cluster needs at least 3 primaries, got {primaries}")
        self.directory = Path(directory)
        self.primaries = primaries
        self.binary = binary
        self.cli = cli
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.nodes: list[LocalRedisServer] = []

    @property
    def url(self) -> str:
        if not self.nodes:
            raise LocalRedisError("the local Redis Cluster is not running (use it as a context manager, or start())")
        return self.nodes[0].url

    def start(self) -> LocalRedisCluster:
        """Start the nodes, join them, and return once the cluster serves every slot; raise :class:`LocalRedisError`
        otherwise (nothing is left running)."""
        if self.nodes:
            raise LocalRedisError("the local Redis Cluster is already running")
        cli = shutil.which(self.cli)
        if cli is None:
            raise LocalRedisError(f"{self.cli!r} not found on PATH: install redis-tools (apt-get install redis-tools)")
        deadline = time.monotonic() + self.startup_timeout
        try:
            for i in range(self.primaries):
                node = LocalRedisServer(
                    self.directory / f"node{i}", binary=self.binary, extra_args=self.extra_args, cluster=True
                )
                self.nodes.append(node)
                node.start()
            self._create(cli, deadline)
            self._wait_ok(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Shut every node down (see :meth:`LocalRedisServer.stop`). Safe to call twice."""
        nodes, self.nodes = self.nodes, []
        for node in nodes:
            node.stop()

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _create(self, cli: str, deadline: float) -> None:
        password = _last_value(self.extra_args, "--requirepass")
        args = [
            cli,
            *(("-a", password, "--no-auth-warning") if password else ()),
            "--cluster", "create",
            *(f"127.0.0.1:{node.port}" for node in self.nodes),
            "--cluster-replicas", "0",
            "--cluster-yes",
        ]  # fmt: skip
        try:
            done = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=max(1.0, deadline - time.monotonic()),
            )
        except subprocess.TimeoutExpired as e:
            raise LocalRedisError(f"redis-cli --cluster create did not finish in {self.startup_timeout:.0f} s") from e
        if done.returncode != 0:
            raise LocalRedisError(
                f"redis-cli --cluster create failed (exit {done.returncode}):\n{done.stdout}{done.stderr}"
            )

    def _wait_ok(self, deadline: float, poll: float = 0.05) -> None:
        """Poll every node's CLUSTER INFO until each serves all slots (``cluster_state:ok``) and knows every node."""
        import redis  # as in LocalRedisServer._shutdown_nosave: importing darkroom stays light

        clients = [
            redis.Redis(port=node.port, socket_timeout=5, password=_last_value(self.extra_args, "--requirepass"))
            for node in self.nodes
        ]
        try:
            while True:
                infos = [client.cluster("INFO") for client in clients]
                if all(_cluster_ok(info, self.primaries) for info in infos):
                    return
                if time.monotonic() > deadline:
                    states = ", ".join(
                        f"{node.port}: {_cluster_field(info, 'cluster_state')}, "
                        f"{_cluster_field(info, 'cluster_known_nodes')} nodes known"
                        for node, info in zip(self.nodes, infos, strict=True)
                    )
                    raise LocalRedisError(
                        f"the local Redis Cluster was not ok after {self.startup_timeout:.0f} s ({states})"
                    )
                time.sleep(poll)
        finally:
            for client in clients:
                client.close()


def _cluster_field(info: object, name: str) -> str:
    """A field of a CLUSTER INFO reply (redis-py parses it into a dict; raw, it is ``name:value`` lines)."""
    if isinstance(info, dict):
        value = info.get(name, info.get(name.encode(), ""))
        return value.decode() if isinstance(value, bytes) else str(value)
    text = info.decode() if isinstance(info, bytes) else str(info)
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return fields.get(name, "").strip()


def _cluster_ok(info: object, nodes: int) -> bool:
    return (
        _cluster_field(info, "cluster_state") == "ok"
        and _cluster_field(info, "cluster_slots_assigned") == "16384"
        and _cluster_field(info, "cluster_known_nodes") == str(nodes)
    )


def _last_value(args: Sequence[str], flag: str) -> str | None:
    values = [args[i + 1] for i in range(len(args) - 1) if args[i] == flag]
    return values[-1] if values else None


def _terminate(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL after 5 s; returns once the process is gone."""
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
