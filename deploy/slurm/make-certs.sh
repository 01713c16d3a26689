#!/usr/bin/env bash
# Make the mutual-TLS files of a holostream Dask cluster: one CA, and one certificate + key
# signed by it that the scheduler, the workers and the client all present.
#   bash deploy/slurm/make-certs.sh DIR [DAYS]
# DIR gets ca.pem, cert.pem, key.pem (mode 600): keep it where only the beamline account
# reads it (e.g. $HOME/.holostream/tls), and pass it as --cluster-tls DIR. A peer without a
# certificate signed by this CA cannot connect to the scheduler.
set -euo pipefail
dir=${1:?usage: make-certs.sh DIR [DAYS]}
days=${2:-365}
umask 077
mkdir -p "$dir"
openssl req -x509 -newkey rsa:3072 -nodes -days "$days" -subj "/CN=holostream-cluster-ca" \
  -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" 2>/dev/null
openssl req -newkey rsa:3072 -nodes -subj "/CN=holostream-cluster" \
  -keyout "$dir/key.pem" -out "$dir/cert.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' > "$dir/ext.cnf"
openssl x509 -req -in "$dir/cert.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" -CAcreateserial \
  -days "$days" -extfile "$dir/ext.cnf" -out "$dir/cert.pem" 2>/dev/null
rm -f "$dir/cert.csr" "$dir/ext.cnf" "$dir/ca.srl"
echo "wrote $dir/ca.pem, $dir/cert.pem, $dir/key.pem (CA key: $dir/ca-key.pem, keep it offline)"
