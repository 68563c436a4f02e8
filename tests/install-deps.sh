#!/bin/sh
# Installs the system programs the tests run for real, on a fresh Debian machine,
# idempotently (a machine that already has them does nothing here, without network):
#   - tmux, openssh-server and openssh-client: the tmux and sshd tests;
#   - systemd-container (systemd-nspawn) and debootstrap: the systemd proof;
#   - socat: the boot test's forwarders into the guest's network namespace;
#   - lintian and dpkg-dev: checking the .deb and its shared-library dependencies;
#   - zip, unzip and binutils: the reaper's Lambda package and its glibc check;
#   - cargo-deb, pinned, built from source with its lockfile: the .deb itself;
#   - the task user `lease`, which the agent runs tasks as.
#
#   tests/install-deps.sh        (as root, or with sudo available)
set -eu

# The version packaging/ was written and checked against; bump it deliberately.
CARGO_DEB_VERSION=3.8.0
packages="tmux openssh-server openssh-client systemd-container debootstrap socat lintian dpkg-dev zip unzip binutils"

log() { echo "install-deps.sh: $*" >&2; }

sudo=
if [ "$(id -u)" -ne 0 ]; then
	command -v sudo >/dev/null || { log "run as root (or install sudo)"; exit 1; }
	sudo=sudo
fi

missing=
for pkg in $packages; do
	if ! dpkg-query --show --showformat='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed; then
		missing="$missing $pkg"
	fi
done
if [ -n "$missing" ]; then
	log "installing$missing"
	$sudo apt-get update
	# shellcheck disable=SC2086 # a list of package names
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
else
	log "apt packages present:$(printf ' %s' $packages)"
fi
# Installing openssh-server starts sshd on a machine that runs systemd; the tests run
# their own sshd on a free port and need nothing from the system one.

# The unprivileged user the agent runs tasks as (lease-common's DEFAULT_TASK_USER), as
# the agent's package creates it; in the docker group (when Docker is installed) so
# its Docker tasks reach the engine.
task_user=lease
if ! getent passwd "$task_user" >/dev/null; then
	log "creating the task user $task_user"
	$sudo useradd --system --create-home --shell /bin/bash "$task_user"
fi
if getent group docker >/dev/null && ! id -nG "$task_user" | tr ' ' '\n' | grep -qx docker; then
	log "adding $task_user to the docker group"
	$sudo usermod -aG docker "$task_user"
fi

if cargo deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
	log "cargo-deb $CARGO_DEB_VERSION present"
else
	log "installing cargo-deb $CARGO_DEB_VERSION"
	nice -n 10 cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi
