#!/bin/sh
# docker-compose.yml's preflight: refuse to start with a secret of deploy/env.example left as it is.
# Each argument names an environment variable that must be set and must not be a CHANGE-me placeholder;
# the values are never printed. Exit 1 (and nothing that takes a secret starts) when one is.
bad=""
for name in "$@"; do
    eval "value=\${$name-}"
    case "$value" in
        "" | *[Cc][Hh][Aa][Nn][Gg][Ee]*) bad="$bad $name" ;;
    esac
done
if [ -n "$bad" ]; then
    echo "edgekit: refusing to start: still the placeholder of deploy/env.example (or empty) in .env:$bad" >&2
    echo "edgekit: set each to a secret of your own (e.g. openssl rand -hex 32), then: docker compose up -d" >&2
    exit 1
fi
echo "edgekit: every secret in .env is set"
