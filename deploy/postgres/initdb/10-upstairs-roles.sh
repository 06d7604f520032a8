#!/bin/sh
# Runs once, when the TimescaleDB container initialises an empty data directory
# (/docker-entrypoint-initdb.d). Creates the two login roles that must have passwords here:
#   upstairs_api    the API's role (migration 0004_api creates it without a password when it is
#                   missing and checks it is no superuser and cannot bypass row-level security)
#   grafana_reader  read-only role for Grafana's PostgreSQL datasource
# Idempotent: run it again by hand (same environment) to change the passwords.
set -eu
: "${API_DB_PASSWORD:?API_DB_PASSWORD must be set}"
: "${GRAFANA_DB_PASSWORD:?GRAFANA_DB_PASSWORD must be set}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v api_password="$API_DB_PASSWORD" -v grafana_password="$GRAFANA_DB_PASSWORD" <<'SQL'
SELECT 'CREATE ROLE upstairs_api LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE'
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'upstairs_api') \gexec
ALTER ROLE upstairs_api PASSWORD :'api_password';
SELECT 'CREATE ROLE grafana_reader LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE'
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'grafana_reader') \gexec
ALTER ROLE grafana_reader PASSWORD :'grafana_password';
GRANT pg_read_all_data TO grafana_reader;
SQL
