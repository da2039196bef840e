#!/usr/bin/env bash
# Prove the README on a brand-new Debian 12: debootstrap a minbase root under a temp dir, chroot in, do only
# what the README says (`apt-get install -y make`, then make), and run `make test T=<selection>` on a clone of
# this checkout's HEAD (commits only). Root only. The chroot gets this machine's apt sources and apt settings
# for reaching them, resolv.conf, CA bundle and PIP_CERT/proxy variables: the same registries, nothing else.
# Usage: tools/pristine-debian12.sh ["pytest selection"]   (default: tests/unit tests/functional)
#        KEEP=1 keeps the temp dir (mounts are always undone).
set -euo pipefail
sel=${1:-tests/unit tests/functional}
src=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" -eq 0 ] || { echo "run as root (debootstrap, chroot, mounts)" >&2; exit 1; }
work=$(mktemp -d /tmp/deskfleet-pristine.XXXXXX)
root=$work/root
mounted=()

cleanup() {
  # processes still running inside the chroot (started by this run), then mounts in reverse, then the tree
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && kill -9 "${p#/proc/}" 2>/dev/null
  done
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount "${mounted[i]}" || umount -l "${mounted[i]}"; done
  if [ -n "${KEEP:-}" ]; then echo "kept $work"; else rm -rf --one-file-system "$work"; fi
}
trap cleanup EXIT
mnt() { mount "$@"; mounted+=("${!#}"); }
phase() { printf '\n=== [%4ss] %s\n' "$SECONDS" "$*"; }

command -v debootstrap >/dev/null || apt-get install -y -q debootstrap
phase "debootstrap --variant=minbase bookworm"
debootstrap --variant=minbase bookworm "$root" "${MIRROR:-http://deb.debian.org/debian}" >"$work/debootstrap.log"
# the registries this machine uses: apt sources + how apt reaches them, DNS, CA bundle (a TLS proxy may sign)
rm -f "$root/etc/apt/sources.list"
cp -a /etc/apt/sources.list /etc/apt/sources.list.d "$root/etc/apt/" 2>/dev/null || true
cp -a /etc/apt/auth.conf.d/. "$root/etc/apt/auth.conf.d/" 2>/dev/null || true
grep -lE 'Proxy|Check-Valid-Until|Check-Date' /etc/apt/apt.conf.d/* 2>/dev/null | xargs -r cp -t "$root/etc/apt/apt.conf.d/"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
mkdir -p "$root/etc/ssl/certs" "$root/usr/local/share/ca-certificates"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
git clone -q "$src" "$root/root/deskfleet"
mnt -t proc proc "$root/proc"
mnt -t sysfs sysfs "$root/sys"
mnt --bind /dev "$root/dev"
mnt --bind /dev/pts "$root/dev/pts"
mnt -t tmpfs tmpfs "$root/dev/shm"

env=(HOME=/root LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
for v in PIP_CERT PIP_INDEX_URL http_proxy https_proxy no_proxy; do [ -n "${!v:-}" ] && env+=("$v=${!v}"); done
in_root() { chroot "$root" /usr/bin/env -i "${env[@]}" /bin/bash -o pipefail -c "$1"; }

in_root 'test ! -e /usr/bin/make && test ! -e /usr/bin/python3 && echo "pristine: no make, no python3"'
phase "README: apt-get install -y make"
in_root 'apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q make >/dev/null'
phase "make setup (system packages + venv from requirements.lock)"
echo "checkout: $(git -C "$root/root/deskfleet" log --oneline -1)"
in_root 'cd /root/deskfleet && make setup 2>&1 | grep --line-buffered -v "^WARNING: Location"'
in_root '$(ls -d /root/.cache/deskfleet/venv-*)/bin/python -V && command -v python3.11'
phase "make test T=\"$sel\""
in_root "cd /root/deskfleet && make test T=\"$sel\""
phase "done"
