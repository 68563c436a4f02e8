#!/bin/sh
# Checks a built leased .deb:
#  1. lintian reports no errors (warnings and notes are printed, not fatal);
#  2. `systemd-analyze verify` prints nothing for the unit as packaged. verify exits 0
#     even for unknown directives and bad values, so its output is what is checked.
#
#   packaging/check-deb.sh target/debian/leased_<version>_<arch>.deb
set -eu

deb=${1:?usage: check-deb.sh PATH.deb}
[ -f "$deb" ] || { echo "check-deb.sh: no such file: $deb" >&2; exit 1; }

echo "check-deb.sh: lintian $deb"
# --fail-on error: only errors fail; the full report stays visible in the log.
lintian --fail-on error --info "$deb"

# Unpack into a scratch root and verify the unit there, so its ExecStart= binary is
# the packaged one. The scratch root also gets this machine's own units (never
# overwriting the packaged one) for the targets and services leased.service names.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
dpkg-deb -x "$deb" "$scratch"
unit=$(find "$scratch" -path '*/systemd/system/leased.service' | head -n 1)
[ -n "$unit" ] || { echo "check-deb.sh: the package has no leased.service" >&2; exit 1; }
mkdir -p "$scratch/usr/lib/systemd/system"
cp -rn /usr/lib/systemd/system/. "$scratch/usr/lib/systemd/system/"

echo "check-deb.sh: systemd-analyze verify ${unit#"$scratch"}"
output=$(systemd-analyze verify --root="$scratch" "$unit" 2>&1) || true
if [ -n "$output" ]; then
	echo "$output"
	echo "check-deb.sh: systemd-analyze verify printed the above for leased.service" >&2
	exit 1
fi
echo "check-deb.sh: ok"
