#!/usr/bin/env bash
# Installs what geoetl needs on Debian 12 when it is missing: PostgreSQL + PostGIS (apt), Node + Azurite
# (npm, project-local), the Python venv. Idempotent and quiet when everything is already there.
#   scripts/bootstrap.sh [--test] [--bench]   (--test adds chromium, gdal-bin and python3-qgis;
#   --bench adds gdal-bin and the corpus)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
AZURITE_VERSION=3.35.0
PG_VERSION=${PG_VERSION:-15}
want_test=0; want_bench=0
for a in "$@"; do case $a in --test) want_test=1 ;; --bench) want_bench=1 ;; esac; done

say() { printf '[bootstrap] %s\n' "$*"; }
as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
apt_install() {  # apt_install [--no-install-recommends] package...
  local opts=() missing=()
  [[ ${1:-} == --no-install-recommends ]] && { opts+=("$1"); shift; }
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  say "apt-get install ${missing[*]}"
  if ((apt_updated == 0)); then as_root apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${opts[@]}" "${missing[@]}" >/dev/null
}

# --- PostgreSQL + PostGIS
apt_install postgresql "postgresql-$PG_VERSION-postgis-3"
if ! pg_lsclusters -h 2>/dev/null | awk '{print $4}' | grep -q online; then
  say "starting the PostgreSQL cluster"
  cluster=$(pg_lsclusters -h | awk 'NR==1{print $1" "$2}')
  # shellcheck disable=SC2086
  as_root pg_ctlcluster --skip-systemctl-redirect $cluster start
fi
for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
# The default DSN logs in as postgres/postgres over TCP: make that work on a fresh cluster.
if ! PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  say "setting the postgres role's password for local TCP logins"
  as_root runuser -u postgres -- psql -qc "ALTER ROLE postgres PASSWORD 'postgres'" >/dev/null
fi

# --- Node + Azurite (project-local)
command -v npm >/dev/null || apt_install nodejs npm
if [[ ! -x .azurite/node_modules/.bin/azurite-blob ]]; then
  say "npm install azurite@$AZURITE_VERSION into .azurite/"
  mkdir -p .azurite
  (cd .azurite && npm install --no-audit --no-fund --silent "azurite@$AZURITE_VERSION" >/dev/null)
fi

# --- the real-data test corpus (public npm packages, cached in .corpus/; tests/corpus.py reads it, and make
#     bench loads its heaviest polygons, countries-maritime-10m)
CORPUS_PACKAGES="@geo-maps/countries-maritime-10m@0.6.0 @geo-maps/earth-seas-10m@0.6.0 world-geojson@3.5.3 us-atlas@3.0.1"
if ((want_test || want_bench)) && [[ ! -f .corpus/.installed-$(echo "$CORPUS_PACKAGES" | sha256sum | cut -c1-16) ]]; then
  say "npm install the test corpus into .corpus/"
  mkdir -p .corpus
  # shellcheck disable=SC2086
  (cd .corpus && npm install --no-audit --no-fund --silent $CORPUS_PACKAGES >/dev/null)
  rm -f .corpus/.installed-*; touch ".corpus/.installed-$(echo "$CORPUS_PACKAGES" | sha256sum | cut -c1-16)"
fi

# --- optional system tools
OGC_CLIENT_VERSION=1.3.0  # @camptocamp/ogc-client, run by the interop tests (geonetwork-ui's client)
if ((want_test)) && [[ ! -f .ogc-client/node_modules/@camptocamp/ogc-client/package.json ]]; then
  say "npm install @camptocamp/ogc-client@$OGC_CLIENT_VERSION into .ogc-client/"
  mkdir -p .ogc-client
  (cd .ogc-client && npm install --no-audit --no-fund --silent "@camptocamp/ogc-client@$OGC_CLIENT_VERSION" >/dev/null)
fi
((want_test)) && apt_install chromium fonts-dejavu-core gdal-bin  # gdal-bin: the interop tests run ogr2ogr (OAPIF)
# QGIS 3.22 (Debian 12), run headless by the interop tests: its Python bindings and providers (OAPIF,
# vector tiles), not the desktop; about 195 MB of packages, 930 MB installed
((want_test)) && apt_install --no-install-recommends python3-qgis
((want_bench)) && apt_install gdal-bin

# --- Python venv
PY=${PYTHON:-}
if [[ -z $PY ]]; then
  for c in python3.11 python3.12 python3; do command -v "$c" >/dev/null && { PY=$c; break; }; done
fi
stamp=.venv/.installed-$(cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -c1-16)
if [[ ! -f $stamp ]]; then
  say "building .venv with $PY"
  [[ -x .venv/bin/python ]] || "$PY" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e . >/dev/null 2>&1
  rm -f .venv/.installed-*
  touch "$stamp"
fi
