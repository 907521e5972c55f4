"""The local mesh: PostgreSQL, Redis, Kafka, Cassandra, every service and Envoy on loopback,
under supervisord.

    python scripts/mesh.py up [--profile dev|test]      start (or complete) the mesh, wait for health
    python scripts/mesh.py down [--profile ...]         stop everything
    python scripts/mesh.py status [--profile ...]       processes, ports, health

Everything lives under `.data/<profile>/` (git-ignored): the PostgreSQL cluster, the
generated supervisord and Envoy configs, secrets, and one log file per process in
`.data/<profile>/logs/`. The shape (services, ports) comes from
services/framework/topology.py; Kafka and Cassandra (jars, configs, schema) from
scripts/infra.py.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen" / "python")]

import grpc  # noqa: E402
import psycopg  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from psycopg import sql  # noqa: E402

from scripts.certs import ensure as ensure_certs  # noqa: E402
from scripts.gateway_config import envoy_config  # noqa: E402
from scripts.infra import Cassandra, Kafka, wait_until  # noqa: E402
from services.framework.identity import TlsFiles, channel_options, plaintext  # noqa: E402
from services.framework.topology import EDGE_AUTH_PEERS, OPERATOR, PROFILES, SERVICES, Profile  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")
VENV_BIN = ROOT / ".venv" / "bin"


class Mesh:
    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.data = ROOT / ".data" / profile.name
        self.pg_data = self.data / "pg"
        self.run_dir = self.data / "run"
        self.logs = self.data / "logs"
        self.sock = self.run_dir / "supervisor.sock"
        self.certs = self.data / "certs"  # the mesh's CA and mTLS certificates (scripts/certs.py)
        self.kafka = Kafka(profile, self.data)
        self.cassandra = Cassandra(profile, self.data, self.logs)

    # -- secrets -------------------------------------------------------------------------
    def secrets(self) -> dict[str, str]:
        path = self.data / "secrets.json"
        values = json.loads(path.read_text()) if path.exists() else {}
        for key in ["postgres", *(s.name for s in SERVICES)]:
            values.setdefault(key, secrets.token_urlsafe(24))
        path.write_text(json.dumps(values, indent=2))
        path.chmod(0o600)
        return values

    def database_url(self, service: str) -> str:
        pw = self.secrets()[service]
        return (
            f"postgresql://interpay_{service}:{pw}@127.0.0.1:{self.profile.postgres_port}/interpay_{service}"
        )

    def jwt_key(self) -> Path:
        key = self.data / "jwt-signing-key.pem"
        if not key.exists():
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import ec

            pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            key.write_bytes(pem)
            key.chmod(0o600)
        return key

    def vault_key(self) -> Path:
        """The vault's key-encryption key (32 random bytes). In Kubernetes it comes from
        the cluster's secret store (a KMS in production), never from the image."""
        key = self.data / "vault-kek.bin"
        if not key.exists():
            key.write_bytes(secrets.token_bytes(32))
            key.chmod(0o600)
        return key

    # -- PostgreSQL ----------------------------------------------------------------------
    def init_postgres(self) -> None:
        if (self.pg_data / "PG_VERSION").exists():
            return
        self.pg_data.mkdir(parents=True, exist_ok=True)
        pwfile = self.run_dir / "pgpass.tmp"
        pwfile.write_text(self.secrets()["postgres"])
        shutil.chown(pwfile, "postgres")
        shutil.chown(self.pg_data, "postgres")
        self.pg_data.chmod(0o700)
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PG_BIN / "initdb"),
                "-D",
                str(self.pg_data),
                "-U",
                "postgres",
                f"--pwfile={pwfile}",
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        pwfile.unlink()
        with (self.pg_data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# InterPay local mesh\n"
                "max_connections = 300\nshared_buffers = 512MB\n"
                "synchronous_commit = on\nfsync = on\n"
                "log_min_duration_statement = 1000\n"
            )

    def provision_databases(self) -> None:
        """One database and one login role per service; a role can reach only its own."""
        pw = self.secrets()
        admin = (
            f"host=127.0.0.1 port={self.profile.postgres_port} user=postgres "
            f"password={pw['postgres']} dbname=postgres"
        )
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("REVOKE CONNECT ON DATABASE postgres FROM PUBLIC")
            for spec in SERVICES:
                role = db = spec.database
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
                verb = "ALTER" if exists else "CREATE"
                conn.execute(
                    sql.SQL("{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                        sql.SQL(verb), sql.Identifier(role), sql.Literal(pw[spec.name])
                    )
                )
                if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
                    conn.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(
                            sql.Identifier(db), sql.Identifier(role)
                        )
                    )
                conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))

    # -- configs -------------------------------------------------------------------------
    def service_env(self, name: str) -> dict[str, str]:
        spec = next(s for s in SERVICES if s.name == name)
        env = {
            "PYTHONPATH": f"{ROOT}:{ROOT / 'gen' / 'python'}",
            "PYTHONUNBUFFERED": "1",
            "INTERPAY_PROFILE": self.profile.name,
            "INTERPAY_GRPC_PORT": str(self.profile.service_port(name)),
            "INTERPAY_METRICS_PORT": str(self.profile.metrics_port(name)),
            "INTERPAY_DATABASE_URL": self.database_url(name),
            "INTERPAY_REDIS_URL": f"redis://127.0.0.1:{self.profile.redis_port}/0",
            "INTERPAY_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "INTERPAY_CASSANDRA_HOSTS": "127.0.0.1",
            "INTERPAY_CASSANDRA_PORT": str(self.profile.cassandra_port),
        }
        if plaintext():
            env["INTERPAY_PLAINTEXT"] = "1"  # development only
        else:
            tls = TlsFiles.in_directory(self.certs, name)
            env |= {
                "INTERPAY_TLS_CERT_FILE": str(tls.cert),
                "INTERPAY_TLS_KEY_FILE": str(tls.key),
                "INTERPAY_TLS_CA_FILE": str(tls.ca),
            }
        for peer in (*spec.peers, *EDGE_AUTH_PEERS):  # the edge-auth peers: every service
            env[f"INTERPAY_{peer.upper()}_ADDR"] = f"127.0.0.1:{self.profile.service_port(peer)}"
        if name == "wallet":
            env["INTERPAY_HOLD_EXPIRY_INTERVAL_SECONDS"] = "1"
            env["INTERPAY_RECONCILE_INTERVAL_SECONDS"] = "30"
        if name == "vault":
            env["INTERPAY_VAULT_KEK_FILE"] = str(self.vault_key())
        if name == "notifications":
            # A local mesh posts webhooks to loopback receivers only; dev and the meshes
            # tests run against (test, aux) retry failed deliveries within seconds rather
            # than minutes.
            env["INTERPAY_WEBHOOK_LOOPBACK_ONLY"] = "1"
            if self.profile.name in ("dev", "test", "aux"):
                env["INTERPAY_WEBHOOK_BACKOFF_BASE_MS"] = "300"
                env["INTERPAY_WEBHOOK_BACKOFF_MAX_MS"] = "3000"
        if self.profile.name == "test":
            # Crash tests arm failpoints here (services/framework/failpoints.py); a dead
            # runner's sagas are taken over after a short lease.
            env["INTERPAY_FAILPOINTS_DIR"] = str(self.data / "failpoints")
            (self.data / "failpoints").mkdir(parents=True, exist_ok=True)
            if name == "orchestrator":
                env["INTERPAY_SAGA_LEASE_SECONDS"] = "3"
        if name == "users":
            env["INTERPAY_JWT_PRIVATE_KEY_FILE"] = str(self.jwt_key())
        return env

    def supervisord_conf(self) -> str:
        def program(
            name: str,
            command: str,
            *,
            autostart: bool,
            env: dict[str, str] | None = None,
            user: str | None = None,
            stopsignal: str = "TERM",
            priority: int = 100,
        ) -> str:
            lines = [
                f"[program:{name}]",
                f"command={command}",
                f"directory={ROOT}",
                f"autostart={'true' if autostart else 'false'}",
                "autorestart=true",
                "startsecs=1",
                "startretries=10",
                f"stopsignal={stopsignal}",
                "stopwaitsecs=20",
                "stopasgroup=true",
                "killasgroup=true",
                f"priority={priority}",
                "redirect_stderr=true",
                f"stdout_logfile={self.logs / (name + '.log')}",
                "stdout_logfile_maxbytes=20MB",
                "stdout_logfile_backups=2",
            ]
            if user:
                lines.append(f"user={user}")
            if env:
                pairs = ",".join(f'{k}="{v}"' for k, v in env.items())
                lines.append(f"environment={pairs.replace('%', '%%')}")
            return "\n".join(lines) + "\n"

        p = self.profile
        parts = [
            "[unix_http_server]",
            f"file={self.sock}",
            "chmod=0700",
            "",
            "[supervisord]",
            f"logfile={self.logs / 'supervisord.log'}",
            f"pidfile={self.run_dir / 'supervisord.pid'}",
            f"childlogdir={self.logs}",
            "nodaemon=false",
            "minfds=4096",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{self.sock}",
            "",
            program(
                "postgres",
                f"{PG_BIN / 'postgres'} -D {self.pg_data} -c listen_addresses=127.0.0.1 "
                f"-c port={p.postgres_port} -c unix_socket_directories={self.pg_sock_dir()}",
                autostart=True,
                user="postgres",
                stopsignal="INT",
                priority=10,
            ),
            program(
                "redis",
                f"/usr/bin/redis-server --bind 127.0.0.1 --port {p.redis_port} "
                f"--save '' --appendonly no --protected-mode yes",
                autostart=True,
                priority=10,
            ),
            # The JVM servers start with the databases, in parallel with everything after
            # them; `up` waits for them last, by when they are usually ready.
            program("kafka", self.kafka.command(), autostart=True, priority=10),
            program("cassandra", self.cassandra.command(), autostart=True, priority=10),
        ]
        for spec in SERVICES:
            parts.append(
                program(
                    spec.name,
                    f"{VENV_BIN / 'python'} -m services.{spec.name}",
                    autostart=False,
                    env=self.service_env(spec.name),
                    priority=50,
                )
            )
        parts.append(
            program(
                "envoy",
                f"{VENV_BIN / 'envoy'} -c {self.data / 'envoy.yaml'} --base-id "
                f"{p.envoy_admin_port} --log-level warn",
                autostart=False,
                priority=90,
            )
        )
        return "\n".join(parts)

    def pg_sock_dir(self) -> Path:
        return self.run_dir / "pg"

    def envoy_yaml(self) -> str:
        return json.dumps(envoy_config(self.profile), indent=1)  # JSON is YAML

    def write_configs(self) -> None:
        for d in (self.data, self.run_dir, self.logs, self.pg_sock_dir()):
            d.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.pg_sock_dir(), "postgres")
        (self.data / "supervisord.conf").write_text(self.supervisord_conf())
        envoy_yaml = self.data / "envoy.yaml"
        # Envoy reads its config once: `up` restarts it when the config changed (mTLS on/off).
        self.envoy_changed = not envoy_yaml.exists() or envoy_yaml.read_text() != self.envoy_yaml()
        envoy_yaml.write_text(self.envoy_yaml())

    # -- lifecycle -----------------------------------------------------------------------
    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / "supervisorctl"), "-c", str(self.data / "supervisord.conf"), *args],
            text=True,
            capture_output=True,
            check=check,
        )

    def supervisord_running(self) -> bool:
        return self.sock.exists() and self.ctl("pid", check=False).returncode == 0

    def up(self) -> None:
        started = time.monotonic()
        ensure_certs(self.certs)
        self.write_configs()
        self.init_postgres()
        self.kafka.prepare()
        self.cassandra.prepare()
        if self.supervisord_running():
            self.ctl("reread")
            self.ctl("update")
            self.ctl("start", "postgres", "redis", "kafka", "cassandra", check=False)
        else:
            subprocess.run(
                [str(VENV_BIN / "supervisord"), "-c", str(self.data / "supervisord.conf")], check=True
            )
        self.wait_for_postgres()
        self.provision_databases()
        self.ctl("start", *(s.name for s in SERVICES), check=False)
        self.wait_for_services()
        self.ctl("restart" if self.envoy_changed else "start", "envoy", check=False)
        self.wait_for_envoy()
        ready = time.monotonic()
        wait_until(self.kafka.ready, 90, "Kafka", self.logs / "kafka.log")
        kafka_ready = time.monotonic()
        wait_until(self.cassandra.ready, 120, "Cassandra", self.logs / "cassandra.log")
        self.cassandra.apply_schema()
        print(
            f"mesh '{self.profile.name}' is up in {time.monotonic() - started:.1f}s "
            f"(services and gateway {ready - started:.1f}s, then waited "
            f"{kafka_ready - ready:.1f}s for Kafka, {time.monotonic() - kafka_ready:.1f}s for "
            f"Cassandra and its schema): gateway http://127.0.0.1:{self.profile.gateway_port}"
            f"  logs {self.logs}"
        )

    def down(self) -> None:
        if not self.supervisord_running():
            print(f"mesh '{self.profile.name}' is not running")
            return
        pid = int(self.ctl("pid").stdout.strip())
        self.ctl("shutdown", check=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        print(f"mesh '{self.profile.name}' is down")

    def wait_for_postgres(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = subprocess.run(
                [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.profile.postgres_port)],
                capture_output=True,
            )
            if done.returncode == 0:
                return
            time.sleep(0.3)
        raise SystemExit(f"PostgreSQL did not start; see {self.logs / 'postgres.log'}")

    def health(self, name: str, timeout: float = 1.0) -> str:
        target = f"127.0.0.1:{self.profile.service_port(name)}"
        if plaintext():
            channel = grpc.insecure_channel(target)
        else:
            tls = TlsFiles.in_directory(self.certs, OPERATOR)
            channel = grpc.secure_channel(target, tls.channel_credentials(), options=channel_options(name))
        with channel as ch:
            try:
                reply = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=timeout
                )
            except grpc.RpcError as exc:
                return f"DOWN ({exc.code().name})"  # type: ignore[attr-defined]
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_for_services(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        pending = [s.name for s in SERVICES]
        while pending and time.monotonic() < deadline:
            pending = [n for n in pending if self.health(n) != "SERVING"]
            if pending:
                time.sleep(0.3)
        if pending:
            raise SystemExit(f"not SERVING after {timeout}s: {pending}; see {self.logs}")

    def envoy_ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.profile.envoy_admin_port}/ready", timeout=1
            ) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_for_envoy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.envoy_ready():
                return
            time.sleep(0.2)
        raise SystemExit(f"Envoy is not ready; see {self.logs / 'envoy.log'}")

    def status(self) -> int:
        if not self.supervisord_running():
            print(f"mesh '{self.profile.name}' is not running")
            return 1
        print(self.ctl("status", check=False).stdout.rstrip())
        p = self.profile
        print(f"\n{'component':<15}{'address':<22}health")
        print(
            f"{'postgres':<15}{'127.0.0.1:' + str(p.postgres_port):<22}"
            f"{'READY' if self.pg_ready() else 'DOWN'}"
        )
        print(
            f"{'redis':<15}{'127.0.0.1:' + str(p.redis_port):<22}{'READY' if self.redis_ready() else 'DOWN'}"
        )
        kafka, cassandra = self.kafka.ready(), self.cassandra.ready()
        print(f"{'kafka':<15}{self.kafka.bootstrap:<22}{'READY' if kafka else 'DOWN'}")
        print(
            f"{'cassandra':<15}{'127.0.0.1:' + str(p.cassandra_port):<22}{'READY' if cassandra else 'DOWN'}"
        )
        ok = kafka and cassandra
        for spec in SERVICES:
            state = self.health(spec.name)
            ok &= state == "SERVING"
            print(f"{spec.name:<15}{'127.0.0.1:' + str(p.service_port(spec.name)):<22}{state}")
        ready = self.envoy_ready()
        ok &= ready
        print(
            f"{'envoy':<15}{'127.0.0.1:' + str(p.gateway_port):<22}{'READY' if ready else 'DOWN'}"
            f"  (admin 127.0.0.1:{p.envoy_admin_port})"
        )
        print(f"\nlogs: {self.logs}/<process>.log")
        return 0 if ok else 1

    def pg_ready(self) -> bool:
        return (
            subprocess.run(
                [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.profile.postgres_port)],
                capture_output=True,
            ).returncode
            == 0
        )

    def redis_ready(self) -> bool:
        return (
            subprocess.run(
                ["redis-cli", "-p", str(self.profile.redis_port), "ping"], capture_output=True, text=True
            ).stdout.strip()
            == "PONG"
        )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["up", "down", "status", "config"])
    parser.add_argument(
        "--profile", default=os.environ.get("INTERPAY_PROFILE", "dev"), choices=sorted(PROFILES)
    )
    args = parser.parse_args()
    mesh = Mesh(PROFILES[args.profile])
    if args.command == "up":
        mesh.up()
    elif args.command == "down":
        mesh.down()
    elif args.command == "config":
        mesh.write_configs()
    else:
        return mesh.status()
    return 0


if __name__ == "__main__":
    sys.exit(main())
