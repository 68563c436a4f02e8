#!/bin/sh
# Builds the agent's Debian package, leased_<version>_<arch>.deb, with cargo-deb.
#
#   packaging/build-deb.sh [--profile NAME] [--no-build] [--fast] [--check] [--out DIR]
#
#   --profile NAME  Cargo profile to package (default: dist, what operators get: the
#                   release build optimised for size, see the root Cargo.toml).
#                   `dev` packages the debug build the test command already made; the
#                   systemd proof uses it to save a second build of the AWS SDK.
#   --no-build      Package the binary already in target/<profile>/ as it is.
#   --fast          Lighter compression (a bigger file, made sooner); for tests.
#   --check         Afterwards run lintian (no errors allowed) and check the unit
#                   with `systemd-analyze verify` (no output allowed).
#   --out DIR       Where the .deb goes (default: target/debian).
#
# Prints the path of the .deb as the last line of stdout; progress goes to stderr.
# Needs cargo-deb (tests/install-deps.sh installs the version this was made with),
# and dpkg-dev for the shared-library dependencies; --check needs lintian.
set -eu

profile=dist
build=1
fast=
check=
out=

usage() {
	sed -n '2,17s/^# \{0,1\}//p' "$0" >&2
	exit 2
}

while [ $# -gt 0 ]; do
	case "$1" in
	--profile) [ $# -ge 2 ] || usage; profile=$2; shift 2 ;;
	--no-build) build=; shift ;;
	--fast) fast=--fast; shift ;;
	--check) check=1; shift ;;
	--out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
	-h | --help) usage ;;
	*) echo "build-deb.sh: unknown argument '$1'" >&2; usage ;;
	esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if ! cargo deb --version >/dev/null 2>&1; then
	echo "build-deb.sh: cargo-deb is not installed; run tests/install-deps.sh" >&2
	exit 1
fi

target_dir=${CARGO_TARGET_DIR:-$root/target}
case "$profile" in
dev | debug) profile=dev; profile_dir=debug ;;
*) profile_dir=$profile ;;
esac
[ -n "$out" ] || out=$target_dir/debian
mkdir -p "$out"

if [ -n "$build" ]; then
	# The whole workspace, never `-p leased`: building one package resolves features
	# differently and would compile the AWS SDK a second time. --locked: a package is
	# built from the lockfile that was reviewed, never from a silently updated one.
	echo "build-deb.sh: building the workspace ($profile profile)" >&2
	nice -n 10 cargo build --workspace --bins --locked --profile "$profile" >&2
fi
if [ ! -x "$target_dir/$profile_dir/leased" ]; then
	echo "build-deb.sh: $target_dir/$profile_dir/leased does not exist; build it first or drop --no-build" >&2
	exit 1
fi

# --no-build: cargo-deb must not run its own `cargo build -p leased` (see above).
# --strip: a dev build keeps line tables for backtraces; the package never ships them.
# The dev profile draws a warning from cargo-deb (it is meant for releases), so
# silence it for that profile only; other warnings are kept.
quiet=
[ "$profile" = dev ] && quiet=--quiet
# cargo-deb prints the path of what it wrote on stdout.
deb=$(cargo deb --package leased --no-build --profile "$profile" --strip $fast $quiet --output "$out" | tail -n 1)
if [ ! -f "$deb" ]; then
	echo "build-deb.sh: cargo-deb did not report a package it wrote (got '$deb')" >&2
	exit 1
fi
version=$(dpkg-deb --field "$deb" Version)

# The changelog's newest entry must name the version being packaged.
changelog_version=$(sed -n '1s/^leased (\([^)]*\)).*/\1/p' packaging/changelog)
if [ "$changelog_version" != "$version" ]; then
	echo "build-deb.sh: packaging/changelog starts with $changelog_version, but the crate is $version: add an entry" >&2
	exit 1
fi

if [ -n "$check" ]; then
	"$root/packaging/check-deb.sh" "$deb" >&2
fi

echo "$deb"
