#!/usr/bin/env bash
# Makes the TLS material of a SASL_SSL Kafka on this machine: a CA of its own and a broker
# certificate it signs for 127.0.0.1 and localhost (RSA 2048, valid 825 days), as PEM files in
# <dir>:
#   ca.pem      the CA certificate: clients trust it (KAFKA_SSL_CA_LOCATION)
#   broker.pem  the broker's private key (unencrypted PKCS#8) and certificate (node.sh's keystore)
#   ca.key      the CA's private key, kept to sign more certificates; never given to anyone
# Existing files are kept: running it again changes nothing.
#
#   deploy/kafka/tls.sh <dir>
set -euo pipefail

dir=${1:?usage: tls.sh <dir>}
command -v openssl >/dev/null || { echo "tls.sh: openssl not found (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
chmod 700 "$dir"
cd "$dir"
if [[ -s ca.pem && -s broker.pem ]]; then exit 0; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=saga-platform local Kafka CA" \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
  -keyout "$work/broker.key" -out "$work/broker.csr" 2>/dev/null
printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
  "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth,clientAuth" >"$work/broker.ext"
openssl x509 -req -days 825 -in "$work/broker.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -extfile "$work/broker.ext" -out "$work/broker.crt" 2>/dev/null
# Kafka's PEM keystore wants a PKCS#8 key followed by the certificate.
openssl pkcs8 -topk8 -nocrypt -in "$work/broker.key" -out "$work/broker.pkcs8"
cat "$work/broker.pkcs8" "$work/broker.crt" >"$work/broker.pem"
install -m 600 "$work/ca.key" "$work/broker.pem" .
install -m 644 "$work/ca.pem" .
