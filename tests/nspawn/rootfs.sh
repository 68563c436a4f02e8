#!/bin/sh
# Prints the path of a minimal Debian 12 root filesystem for the systemd proof, made
# with debootstrap the first time and cached afterwards (debootstrap takes a minute or
# more; the cache is reused until this script changes).
#
#   tests/nspawn/rootfs.sh CACHE_DIR [cloud-init]
#
# The packages are what an EC2 Debian image has that the proof needs: systemd as init,
# D-Bus, the agent's dependencies (tmux, ca-certificates), procps for the checks and
# openssh-server so provision.sh's host-key handling is exercised. With all of the
# agent's dependencies present, provision.sh installs the package without network.
# LEASE_DEBIAN_MIRROR overrides debootstrap's default mirror.
#
# The `cloud-init` flavour is a stock cloud image instead, for the boot test
# (tests/tests/boot.rs): Debian's own cloud-init (with python3, which cloud-init
# guarantees and the user-data's install script uses) and no openssh-server, no agent.
# python3-cffi-backend: without it debootstrap fails configuring python3-cryptography,
# which cloud-init pulls in. tmux stays, because the guest has no network to fetch the
# agent's dependencies from; on EC2, apt fetches it.
set -eu

cache=${1:?usage: rootfs.sh CACHE_DIR [cloud-init]}
flavour=${2:-}
suite=bookworm
include=systemd,systemd-sysv,dbus,tmux,ca-certificates,procps,openssh-server,iproute2
case "$flavour" in
"") name=debian-$suite ;;
cloud-init)
	name=debian-$suite-cloud-init
	include=systemd,systemd-sysv,dbus,tmux,ca-certificates,procps,iproute2,cloud-init,python3-cffi-backend
	;;
*) echo "rootfs.sh: unknown flavour '$flavour' (known: cloud-init)" >&2; exit 2 ;;
esac

[ "$(id -u)" -eq 0 ] || { echo "rootfs.sh: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "rootfs.sh: debootstrap is missing; run tests/install-deps.sh" >&2; exit 1; }

# The cache key covers this script, so a change to the package list makes a new tree.
key=$(sha256sum "$0" | cut -c1-12)
dest=$cache/$name-$key
if [ -f "$dest/.complete" ]; then
	echo "$dest"
	exit 0
fi

mkdir -p "$cache"
# Build beside the destination and rename into place, so an interrupted run never
# leaves a half-made tree that looks complete.
work=$(mktemp -d "$cache/.debootstrap-XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "rootfs.sh: debootstrap $suite into $dest (cached afterwards)" >&2
# shellcheck disable=SC2086 # an unset mirror must be no argument at all
debootstrap --variant=minbase --include="$include" "$suite" "$work/root" ${LEASE_DEBIAN_MIRROR:-} >&2
# An empty machine-id, as on an image: systemd makes one at boot.
: >"$work/root/etc/machine-id"
touch "$work/root/.complete"
# Older trees of this flavour are from an earlier version of this script.
find "$cache" -maxdepth 1 -regex ".*/$name-[0-9a-f]*" ! -name "$name-$key" -exec rm -rf {} +
mv "$work/root" "$dest"
echo "$dest"
