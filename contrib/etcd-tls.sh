#!/usr/bin/env bash
# Certificates for a TLS etcd cluster and its clients (flowtui agents, flowtui commands, etcdctl).
#
#   contrib/etcd-tls.sh OUTDIR NAME=SAN[,SAN...] [NAME=SAN[,SAN...] ...]
#   contrib/etcd-tls.sh /etc/flowtui/pki etcd1=10.0.0.1,etcd1.example.internal etcd2=10.0.0.2 etcd3=10.0.0.3
#
# Writes, with openssl only (no network):
#   ca.crt, ca.key            the cluster's CA (EC P-256, 10 years); an existing one in OUTDIR is reused,
#                             so members can be added later with the same CA
#   NAME.crt, NAME.key        one per member: its SANs (IP addresses or DNS names) are where clients and
#                             peers reach it; good for server AND client authentication (etcd's own gRPC
#                             gateway and its peers connect with it)
#   client.crt, client.key    for flowtui and etcdctl: client authentication only
# Keys are mode 0600. An existing member or client certificate is never overwritten (remove it first).
# DAYS (environment, default 825) is the validity of member and client certificates.
set -euo pipefail

usage() { echo "usage: $0 OUTDIR NAME=SAN[,SAN...] [NAME=SAN[,SAN...] ...]" >&2; exit 2; }
[ $# -ge 2 ] || usage
out=$1; shift
days=${DAYS:-825}
case $days in ''|*[!0-9]*) echo "DAYS=$days: expected a number of days" >&2; exit 2;; esac
umask 077
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

sans_of() {  # "10.0.0.1,etcd1.example" -> "IP:10.0.0.1,DNS:etcd1.example"
    local item result=""
    IFS=',' read -r -a items <<< "$1"
    for item in "${items[@]}"; do
        [ -n "$item" ] || continue
        if [[ $item =~ ^[0-9.]+$ || $item == *:* ]]; then result+="IP:$item,"; else result+="DNS:$item,"; fi
    done
    echo "${result%,}"
}

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 600 "$1"; }

if [ ! -f "$out/ca.key" ]; then
    key "$out/ca.key"
    openssl req -x509 -new -key "$out/ca.key" -sha256 -days 3650 -subj "/CN=flowtui etcd CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$out/ca.crt"
    echo "made the CA: $out/ca.crt"
else
    echo "reusing the CA in $out"
fi

sign() {  # name, subject CN, extendedKeyUsage, subjectAltName (may be empty)
    local name=$1 cn=$2 usage=$3 sans=$4
    if [ -e "$out/$name.crt" ] || [ -e "$out/$name.key" ]; then
        echo "$out/$name.crt exists: not overwritten (remove $name.crt and $name.key to make it again)" >&2
        exit 1
    fi
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$usage"
        [ -z "$sans" ] || echo "subjectAltName=$sans"
    } > "$work/$name.ext"
    key "$work/$name.key"
    openssl req -new -key "$work/$name.key" -subj "/CN=$cn" -out "$work/$name.csr"
    openssl x509 -req -in "$work/$name.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
        -CAserial "$work/ca.srl" -days "$days" -sha256 -extfile "$work/$name.ext" -out "$work/$name.crt" 2>/dev/null
    mv "$work/$name.key" "$out/$name.key"
    mv "$work/$name.crt" "$out/$name.crt"
    chmod 644 "$out/$name.crt"
    echo "made $out/$name.crt${sans:+ ($sans)}"
}

for member in "$@"; do
    name=${member%%=*}
    sans=${member#*=}
    if [ "$name" = "$member" ] || [ -z "$sans" ] || [[ ! $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] \
        || [ "$name" = client ] || [ "$name" = ca ]; then
        echo "bad member '$member': expected NAME=SAN[,SAN...] (NAME: letters, digits, . _ -; not ca or client)" >&2
        exit 2
    fi
    sign "$name" "$name" "serverAuth,clientAuth" "$(sans_of "$sans")"
done
if [ -e "$out/client.crt" ]; then
    echo "keeping $out/client.crt"
else
    sign client flowtui "clientAuth" ""
fi
chmod 644 "$out/ca.crt"
