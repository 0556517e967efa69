"""Redis, PostgreSQL, an MLflow tracking server and NATS with JetStream on loopback, each under one folder, for
the production profile.

`make services` starts them under PULSE_HOME/services on their default ports and `make services-stop` stops
them; the integration tests start their own instances on free ports. Redis comes from Debian's redis-server,
PostgreSQL from the machine's binaries (initdb, pg_ctl, postgres), MLflow from the project's environment, NATS
from Debian's nats-server (JetStream on, its streams stored in its folder, so a restarted server keeps them).

Redis keeps an append-only file in its folder (fsync every second, no RDB snapshots): a Redis killed and started
again on the same folder (`restart_redis`) serves the keys Feast materialised before, as a production online
store would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PG_USER = "pulse"
PG_DATABASES = ("dagster", "mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not come up within {timeout:.0f}s")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def pg_bin(tool: str) -> str:
    found = shutil.which(tool)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not versions:
        raise FileNotFoundError("PostgreSQL binaries not found (apt-get install postgresql)")
    return str(versions[-1] / tool)


def _as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: drop to the postgres system user when we are root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _redis_ping(port: int) -> bool:
    # A Redis loading its append-only file accepts connections but answers -LOADING: wait for +PONG.
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen | None = field(default=None, repr=False)
    folder: Path | None = None
    group: bool = False  # the process leads its own process group: signal the whole group

    def _signal(self, sig: signal.Signals) -> None:
        os.killpg(self.proc.pid, sig) if self.group else self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, no clean shutdown (a crash); returns once the process is gone."""
        if self.proc and self.proc.poll() is None:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)


def start_redis(folder: Path, port: int) -> Service:
    """redis-server on loopback; its data persists in ``folder`` (append-only file, no RDB snapshots)."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
         "--appendonly", "yes", "--appendfsync", "everysec", "--protected-mode", "yes"],
        stdout=open(folder / "redis.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115 (the child keeps the log open)
    )  # fmt: skip
    _wait(lambda: _redis_ping(port), f"redis on :{port}")
    return Service("redis", port, proc, folder)


def restart_redis(service: Service) -> Service:
    """Start Redis again on the same port and folder (it reloads its append-only file) after it stopped or was
    killed; ``service`` then holds the new process, so whoever stops it stops the new one."""
    assert service.folder is not None, "not a Redis started by start_redis"
    if service.proc and service.proc.poll() is None:
        raise RuntimeError(f"redis on :{service.port} is still running (pid {service.proc.pid})")
    service.proc = start_redis(service.folder, service.port).proc
    return service


def start_nats(folder: Path, port: int) -> Service:
    """nats-server with JetStream on loopback; streams and consumers persist in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(folder / "jetstream"),
         "-l", str(folder / "nats.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    _wait(lambda: _nats_ping(port), f"nats on :{port}")
    return Service("nats", port, proc, folder)


def restart_nats(service: Service) -> Service:
    """Start NATS again on the same port and folder (JetStream reloads its streams) after it stopped or was
    killed; ``service`` then holds the new process."""
    assert service.folder is not None, "not a NATS started by start_nats"
    if service.proc and service.proc.poll() is None:
        raise RuntimeError(f"nats on :{service.port} is still running (pid {service.proc.pid})")
    service.proc = start_nats(service.folder, service.port).proc
    return service


def _nats_ping(port: int) -> bool:
    # The server greets with INFO; PING must be answered with PONG once it serves clients.
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        if not s.recv(4096).startswith(b"INFO"):
            return False
        s.sendall(b"CONNECT {}\r\nPING\r\n")
        return b"PONG" in s.recv(64)


def start_postgres(folder: Path, port: int) -> Service:
    """initdb on first use (trust auth on loopback only), then run postgres in the foreground of a child."""
    data = folder / "data"
    if not (data / "PG_VERSION").exists():
        folder.mkdir(parents=True, exist_ok=True)
        data.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres")
            shutil.chown(data, "postgres")
            folder.chmod(0o755)
        subprocess.run(
            _as_postgres([pg_bin("initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8"]),
            check=True, capture_output=True,
        )  # fmt: skip
    proc = subprocess.Popen(
        _as_postgres([pg_bin("postgres"), "-D", str(data), "-p", str(port), "-k", str(folder),
                      "-c", "listen_addresses=127.0.0.1"]),
        stdout=open(folder.parent / f"postgres-{port}.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115 (the child keeps the log open)
    )  # fmt: skip
    _wait(lambda: _port_open(port), f"postgres on :{port}")
    for db in PG_DATABASES:
        subprocess.run(
            [pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, db], capture_output=True
        )  # exists already on later starts: fine
    return Service("postgres", port, proc)


def postgres_uri(port: int, db: str) -> str:
    return f"postgresql://{PG_USER}@127.0.0.1:{port}/{db}"


def start_mlflow(folder: Path, port: int, pg_port: int) -> Service:
    folder.mkdir(parents=True, exist_ok=True)
    mlflow = str(Path(sys.executable).parent / "mlflow")
    proc = subprocess.Popen(
        [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", postgres_uri(pg_port, "mlflow"),
         "--serve-artifacts", "--artifacts-destination", str(folder / "artifacts")],
        stdout=open(folder / "mlflow-server.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115 (the child keeps the log open)
        start_new_session=True,  # its own process group: uvicorn and the job consumers stop with it
    )  # fmt: skip
    _wait(lambda: _port_open(port), f"mlflow server on :{port}", timeout=90)
    return Service("mlflow", port, proc, group=True)


def _pids_file(home: Path) -> Path:
    return home / "services" / "pids.json"


def _services_env(home: Path) -> Path:
    from pulse.settings import SERVICES_FILE

    return home / SERVICES_FILE


def main(argv: list[str]) -> int:
    home = Path(os.environ.get("PULSE_HOME", ".pulse")).resolve()
    ports = {"redis": 6379, "postgres": 5432, "mlflow": 5000, "nats": 4222}
    if argv[:1] == ["start"]:
        redis = start_redis(home / "services" / "redis", ports["redis"])
        pg = start_postgres(home / "services" / "postgres", ports["postgres"])
        ml = start_mlflow(home / "services" / "mlflow", ports["mlflow"], ports["postgres"])
        nats = start_nats(home / "services" / "nats", ports["nats"])
        pids = {s.name: s.proc.pid for s in (redis, pg, ml, nats)}
        _pids_file(home).write_text(json.dumps(pids))
        # Decisions go to these servers from every pulse command of this home while they run (pulse.settings).
        _services_env(home).write_text(
            "# Written by `make services`, removed by `make services-stop`; PULSE_* variables override it.\n"
            f"PULSE_DECISIONS__REDIS_URL=redis://127.0.0.1:{ports['redis']}/0\n"
            f"PULSE_DECISIONS__NATS_URL=nats://127.0.0.1:{ports['nats']}\n"
        )
        print(
            "services up. For the production profile:\n"
            f"  export PULSE_PROFILE=production PULSE_SERVERS__REDIS_URL=127.0.0.1:{ports['redis']}\n"
            f"  export PULSE_SERVERS__MLFLOW_TRACKING_URI=http://127.0.0.1:{ports['mlflow']}\n"
            f"  export PULSE_PG_HOST=127.0.0.1 PULSE_PG_PORT={ports['postgres']} PULSE_PG_USER={PG_USER} "
            "PULSE_PG_PASSWORD= PULSE_PG_DAGSTER_DB=dagster\n"
            f"  NATS JetStream at nats://127.0.0.1:{ports['nats']} (pulse live --bus nats://127.0.0.1:{ports['nats']})\n"
            f"Decisions out (surge keys and moves, any profile) go to these servers: {_services_env(home)}"
        )
        return 0
    if argv[:1] == ["stop"]:
        pids = json.loads(_pids_file(home).read_text()) if _pids_file(home).exists() else {}
        for name, pid in pids.items():
            if name == "postgres":  # a clean shutdown through pg_ctl, whatever process tree runuser made
                data = home / "services" / "postgres" / "data"
                subprocess.run(_as_postgres([pg_bin("pg_ctl"), "stop", "-D", str(data), "-m", "fast"]), check=False)
                print(f"stopped postgres ({data})")
                continue
            try:
                os.killpg(pid, signal.SIGTERM) if name == "mlflow" else os.kill(pid, signal.SIGTERM)
                print(f"stopped {name} (pid {pid})")
            except ProcessLookupError:
                print(f"{name} (pid {pid}) was not running")
        _pids_file(home).unlink(missing_ok=True)
        _services_env(home).unlink(missing_ok=True)
        return 0
    print("usage: python -m ops.services start|stop", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
