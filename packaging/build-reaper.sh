#!/bin/sh
# Builds the reaper's Lambda package, lease-reaper.zip: the `bootstrap` binary that
# the provided.al2023 runtime runs, checked against that runtime's glibc.
#
#   packaging/build-reaper.sh [--profile NAME] [--no-build] [--out DIR]
#
#   --profile NAME  Cargo profile to package (default: dist, the size-optimised release
#                   build). `dev` packages the debug build the test command already made.
#   --no-build      Package the binary already in target/<profile>/ as it is.
#   --out DIR       Where the zip goes (default: target/lambda).
#
# Fails when the binary needs a glibc newer than 2.34, provided.al2023's (the build
# host may have a newer one; packaging/check-glibc.sh lists the symbols at fault).
# The zip's comment records the architecture (`lease-reaper VERSION ARCH`, ARCH being
# x86_64 or arm64, Lambda's names), which the deployment reads to create the function
# for the same architecture. Prints the zip's path as the last line of stdout; progress
# goes to stderr. Needs zip and binutils (objdump, readelf, strip).
set -eu

profile=dist
build=1
out=
# Amazon Linux 2023's glibc, which provided.al2023 functions run on.
max_glibc=2.34

usage() {
	sed -n '2,18s/^# \{0,1\}//p' "$0" >&2
	exit 2
}

while [ $# -gt 0 ]; do
	case "$1" in
	--profile) [ $# -ge 2 ] || usage; profile=$2; shift 2 ;;
	--no-build) build=; shift ;;
	--out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
	-h | --help) usage ;;
	*) echo "build-reaper.sh: unknown argument '$1'" >&2; usage ;;
	esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

for tool in zip readelf strip; do
	if ! command -v "$tool" >/dev/null; then
		echo "build-reaper.sh: $tool is missing; run tests/install-deps.sh" >&2
		exit 1
	fi
done

target_dir=${CARGO_TARGET_DIR:-$root/target}
case "$profile" in
dev | debug) profile=dev; profile_dir=debug ;;
*) profile_dir=$profile ;;
esac
[ -n "$out" ] || out=$target_dir/lambda
mkdir -p "$out"

if [ -n "$build" ]; then
	# The whole workspace, never `-p lease-reaper`: building one package resolves
	# features differently and would compile the AWS SDK a second time.
	echo "build-reaper.sh: building the workspace ($profile profile)" >&2
	nice -n 10 cargo build --workspace --bins --locked --profile "$profile" >&2
fi
binary=$target_dir/$profile_dir/bootstrap
if [ ! -x "$binary" ]; then
	echo "build-reaper.sh: $binary does not exist; build it first or drop --no-build" >&2
	exit 1
fi

newest=$("$root/packaging/check-glibc.sh" "$binary" "$max_glibc")
echo "build-reaper.sh: bootstrap needs glibc $newest at most (provided.al2023 has $max_glibc)" >&2

machine=$(readelf -h "$binary" | sed -n 's/^ *Machine: *//p')
case "$machine" in
*X86-64*) arch=x86_64 ;;
*AArch64*) arch=arm64 ;;
*) echo "build-reaper.sh: $binary is for '$machine', which Lambda does not run" >&2; exit 1 ;;
esac
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$binary" "$stage/bootstrap"
# Symbols and line tables: the function never needs them (a 4x smaller zip for dev).
strip "$stage/bootstrap"
chmod 755 "$stage/bootstrap"
# A fixed timestamp, so the same binary always gives the same zip (and the same
# CodeSha256: redeploying an unchanged build changes nothing).
touch -t 198001010000 "$stage/bootstrap"
zip="$out/lease-reaper.zip"
rm -f "$zip"
(cd "$stage" && zip -q -X -9 "$zip.tmp" bootstrap)
echo "lease-reaper $version $arch" | zip -q -z "$zip.tmp"
mv "$zip.tmp" "$zip"
echo "build-reaper.sh: $zip ($arch, $(wc -c <"$zip") bytes)" >&2
echo "$zip"
