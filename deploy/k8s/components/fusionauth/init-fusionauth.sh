#!/bin/bash
# PostgreSQL's docker-entrypoint runs this once, when it initializes an
# empty data directory: FusionAuth's own role and database (owner), so
# FusionAuth creates its schema as that user and never needs the superuser.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  --set=fusionauth_password="$(cat /run/secrets/db/password)" <<'SQL'
CREATE ROLE fusionauth LOGIN PASSWORD :'fusionauth_password';
CREATE DATABASE fusionauth OWNER fusionauth ENCODING 'UTF8' TEMPLATE template0;
SQL
