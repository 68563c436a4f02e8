#!/bin/sh
# The proof under real systemd (issue 5), as the test command runs it:
#   1. the workspace's binaries (the test command's own debug build: a no-op when the
#      test command has already built them);
#   2. the .deb from that build, checked with lintian and systemd-analyze verify;
#   3. tests/tests/systemd_nspawn.rs: debootstrap (cached under .cache/nspawn), the AMI
#      recipe's provision.sh, a boot under systemd-nspawn, and the checks;
#   4. tests/tests/boot.rs: the user-data `lease launch` stores, booted by Debian's
#      cloud-init (a second cached tree), installing the package from moto's S3.
#
#   tests/systemd-proof.sh       (as root; tests/install-deps.sh first)
#
# Why the debug build: the proof is about the package, the unit, provision.sh and the
# agent's behaviour under systemd, which are the same in every profile. A release build
# of the AWS SDK costs about 13 minutes of both cores, a third of the CI budget, for a
# binary the proof would treat exactly like this one. `packaging/build-deb.sh` (release
# by default) is what makes the package operators get, from the same metadata and files.
#
# LEASE_MOTO_SERVER (moto_server of the test venv) is passed through to the test.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ "$(id -u)" -eq 0 ] || { echo "systemd-proof.sh: needs root (debootstrap, systemd-nspawn)" >&2; exit 1; }

now() { date +%s; }
t0=$(now)
nice -n 10 cargo build --workspace --bins >&2
t1=$(now)
deb=$(packaging/build-deb.sh --profile dev --no-build --fast --check)
t2=$(now)
echo "systemd-proof.sh: package $deb (build $((t1 - t0))s, package and checks $((t2 - t1))s)" >&2

LEASE_DEB=$deb nice -n 10 cargo test --workspace --test systemd_nspawn -- --ignored --nocapture --test-threads=1
# The boot test (issue 12): launch's user-data under Debian's cloud-init, installing
# this package from moto's S3.
LEASE_DEB=$deb nice -n 10 cargo test --workspace --test boot -- --ignored --nocapture --test-threads=1
t3=$(now)
echo "systemd-proof.sh: proof passed in $((t3 - t2))s (total $((t3 - t0))s)" >&2
