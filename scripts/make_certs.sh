#!/usr/bin/env bash
# A private CA and a server certificate for Mosquitto's TLS listener (127.0.0.1 and localhost).
# Usage: scripts/make_certs.sh [OUT_DIR]   (default .run/certs, which git ignores)
# Writes ca.crt, ca.key, server.crt, server.key; keys are mode 600. Run again to replace them.
set -euo pipefail
OUT="${1:-$(dirname "$0")/../.run/certs}"
DAYS="${CERT_DAYS:-825}"
mkdir -p "$OUT"
cd "$OUT"
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$DAYS" \
  -keyout ca.key -out ca.crt -subj "/CN=edgekit test CA" >/dev/null 2>&1
openssl req -newkey rsa:2048 -nodes -sha256 \
  -keyout server.key -out server.csr -subj "/CN=localhost" >/dev/null 2>&1
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days "$DAYS" \
  -extfile server.ext -out server.crt >/dev/null 2>&1
rm -f server.csr server.ext ca.srl
chmod 644 ca.crt server.crt
echo "certificates in $(cd "$OUT" && pwd): ca.crt server.crt server.key (ca.key: keep private)"
