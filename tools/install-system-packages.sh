#!/usr/bin/env bash
# Install the Debian packages in tools/apt-packages.txt that are missing.
# Idempotent; keeps distro services from auto-starting (the tests start their own daemons).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mapfile -t wanted < <(sed -e 's/#.*//' -e '/^\s*$/d' "$here/apt-packages.txt")
missing=()
for p in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && { echo "system packages: all ${#wanted[@]} present"; exit 0; }
if [ "$(id -u)" -ne 0 ]; then
  echo "system packages missing (${missing[*]}); run this script as root" >&2
  exit 1
fi
echo "system packages: installing ${missing[*]}"
# policy-rc.d 101 = "do not start services from maintainer scripts"
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
