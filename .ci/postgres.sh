#!/usr/bin/env bash
# Make sure a PostgreSQL server can be started by the tests (tests/pg.py runs initdb + pg_ctl
# itself, on a temp folder and a free local port; no system service is started here).
# Debian's package puts the binaries in /usr/lib/postgresql/<major>/bin and creates the
# `postgres` user the tests run the server as (PostgreSQL refuses to run as root).
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null && id postgres > /dev/null 2>&1; then
    echo "postgres.sh: PostgreSQL server binaries present"
else
    echo "postgres.sh: installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql > /dev/null
fi
