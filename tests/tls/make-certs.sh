#!/usr/bin/env bash
# Makes a throwaway certificate authority and two server certificates it signed, for the wss://
# tests (tests/e2e, tests/faults, tests/c), with `openssl`:
#
#   tests/tls/make-certs.sh DIR
#
# writes, in DIR (which must exist): ca.pem (the CA clients trust), cert.pem + key.pem (the
# server's, for localhost and 127.0.0.1, P-256) and cert2.pem + key2.pem (a second pair, with
# another serial and CN "sockeye-test-2", for reload tests). Valid from now for two
# days. The CA's key is deleted at the end: nothing else can ever be signed with it.
set -euo pipefail
dir=$1
[ -d "$dir" ] || { echo "make-certs.sh: $dir is not a directory" >&2; exit 2; }
command -v openssl >/dev/null || { echo "make-certs.sh: openssl is not installed" >&2; exit 1; }
cd "$dir"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 2 -subj "/CN=sockeye test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
cat >leaf.ext <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EXT
leaf() { # CN CERT KEY
    openssl req "${ec[@]}" -keyout "$3" -out leaf.csr -subj "/CN=$1" 2>/dev/null
    openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -set_serial "0x$(openssl rand -hex 8)" \
        -days 2 -extfile leaf.ext -out "$2" 2>/dev/null
}
leaf localhost cert.pem key.pem
leaf sockeye-test-2 cert2.pem key2.pem
rm -f ca.key leaf.csr leaf.ext
chmod 600 key.pem key2.pem
