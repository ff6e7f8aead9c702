#!/usr/bin/env bash
# The fleet's private CA and the broker's server certificate for Mosquitto's TLS listener.
# Usage: scripts/make_certs.sh [OUT_DIR] [HOST ...]   (OUT_DIR default .run/certs, which git ignores)
# HOST: each name and address the boards and the gateway use to reach the broker; the certificate covers
# them all, plus localhost, 127.0.0.1, this machine's name (and <name>.local) and its addresses.
# Writes ca.crt (and ca.der, the same for the boards: their MicroPython reads DER), ca.key, server.crt,
# server.key; the keys are mode 600. Run again (e.g. with another address) to issue a new server
# certificate: the CA is kept, so the boards need nothing new.
set -euo pipefail
OUT="${1:-$(dirname "$0")/../.run/certs}"
shift || true
DAYS="${CERT_DAYS:-825}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$OUT"
umask 077

hosts=(localhost 127.0.0.1)
if h="$(hostname 2>/dev/null)" && [ -n "$h" ]; then hosts+=("$h" "$h.local"); fi
if addrs="$(hostname -I 2>/dev/null)"; then for a in $addrs; do hosts+=("$a"); done; fi
hosts+=("$@")
san=""
seen=" "
for h in "${hosts[@]}"; do
  case "$seen" in *" $h "*) continue ;; esac
  seen="$seen$h "
  if [[ "$h" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ || "$h" == *:* ]]; then
    san="$san,IP:$h"
  elif [[ "$h" =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then
    san="$san,DNS:$h"
  else
    echo "make_certs.sh: '$h' is neither a host name nor an address" >&2
    exit 2
  fi
done
san="${san#,}"

if [ ! -s ca.key ] || [ ! -s ca.crt ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
    -keyout ca.key -out ca.crt -subj "/CN=edgekit fleet CA" >/dev/null 2>&1
fi
openssl x509 -in ca.crt -outform DER -out ca.der
openssl req -newkey rsa:2048 -nodes -sha256 \
  -keyout server.key -out server.csr -subj "/CN=${hosts[0]}" >/dev/null 2>&1
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days "$DAYS" \
  -extfile server.ext -out server.crt >/dev/null 2>&1
rm -f server.csr server.ext ca.srl
chmod 600 ca.key server.key
chmod 644 ca.crt ca.der server.crt
echo "certificates in $OUT: ca.crt ca.der server.crt server.key (ca.key: keep private)"
echo "the server certificate covers: ${san//,/ }"
