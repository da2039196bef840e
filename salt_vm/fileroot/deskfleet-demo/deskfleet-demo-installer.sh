#!/bin/sh
# deskfleet demo installer: a stand-in for a real silent installer, for the
# software catalog's Linux demo entry and the rollout integration tests.
#
#   deskfleet-demo-installer.sh --version-file PATH --log PATH [--wait-for PATH] [--fail CODE] [--uninstall]
#
# Install: writes VERSION to --version-file and appends one line to --log (so a
# test can count real installs). --wait-for blocks (up to 120 s) until PATH
# exists; --fail exits with CODE before touching anything. --uninstall removes
# the version file and logs that too.
set -eu
VERSION=1.0.0
version_file=
log=
wait_for=
fail=
action=install
while [ $# -gt 0 ]; do
    case "$1" in
        --version-file) version_file=$2; shift 2 ;;
        --log) log=$2; shift 2 ;;
        --wait-for) wait_for=$2; shift 2 ;;
        --fail) fail=$2; shift 2 ;;
        --uninstall) action=uninstall; shift ;;
        *) echo "deskfleet-demo-installer: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -z "$version_file" ] || [ -z "$log" ]; then
    echo "deskfleet-demo-installer: --version-file and --log are required" >&2
    exit 2
fi
if [ -n "$fail" ]; then
    echo "deskfleet-demo-installer: failing with $fail as asked" >&2
    exit "$fail"
fi
if [ -n "$wait_for" ]; then
    waited=0
    while [ ! -e "$wait_for" ]; do
        if [ "$waited" -ge 1200 ]; then
            echo "deskfleet-demo-installer: $wait_for never appeared" >&2
            exit 4
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
fi
mkdir -p "$(dirname "$version_file")" "$(dirname "$log")"
if [ "$action" = uninstall ]; then
    rm -f "$version_file"
else
    tmp="$version_file.tmp.$$"
    printf '%s\n' "$VERSION" > "$tmp"
    mv "$tmp" "$version_file"
fi
printf '%s %s %s pid=%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$action" "$VERSION" "$$" >> "$log"
echo "deskfleet-demo $VERSION: $action done"
