#!/bin/sh
# Turns a Debian (12 or later) machine into a lease image: installs the leased package
# and its dependencies, enables the service without starting it, and clears everything
# instance-specific, so each instance booted from the image gets a fresh identity, runs
# cloud-init afresh (which writes /etc/leased/config.yaml from its user-data) and
# starts a ready agent.
#
#   sudo ami/provision.sh PATH/leased_<version>_<arch>.deb
#
# Run by the Packer template beside it on a live build instance, and by the systemd
# test in a Debian root filesystem (tests/systemd-proof.sh). It must be the last step
# of an image build: it removes the build's own SSH access (authorized_keys).
#
# Environment:
#   LEASE_EXTRA_PACKAGES  more packages to install, e.g. "docker.io" for Docker tasks.
set -eu

deb=${1:?usage: provision.sh PATH/leased_<version>_<arch>.deb}
extra=${LEASE_EXTRA_PACKAGES:-}

log() { echo "provision.sh: $*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "must run as root"; exit 1; }
[ -f "$deb" ] || { log "no such package: $deb"; exit 1; }
command -v apt-get >/dev/null || { log "needs a Debian-based system (apt-get)"; exit 1; }
case "$deb" in
/*) ;;
*) deb=$(pwd)/$deb ;; # apt-get installs a local file only from a path with a slash
esac

export DEBIAN_FRONTEND=noninteractive
# Wait for the apt lock instead of failing while the base image's own first-boot jobs
# (unattended-upgrades, cloud-init package installs) still hold it. Keep a config file
# that is already there (a base image may carry one) instead of stopping at dpkg's
# conffile question, which nobody can answer here.
apt_get() {
	apt-get -o DPkg::Lock::Timeout=600 \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold -y "$@"
}

systemd_running() { [ -d /run/systemd/system ]; }

# On a live build instance, cloud-init may still be configuring the machine (and using
# apt); let it finish so its state is complete before it is cleared below.
if systemd_running && command -v cloud-init >/dev/null; then
	log "waiting for cloud-init to finish"
	cloud-init status --wait >/dev/null || true
fi

# 1. Install, without starting the agent. The machine baking the image must not
#    enforce a lease of its own (it has none: the agent would apply the default TTL,
#    and persist that deadline into the image). The package's postinst starts the
#    service through deb-systemd-invoke, which obeys policy-rc.d; forbid every start
#    for the duration of the install, keeping any policy-rc.d the base image has.
policy=/usr/sbin/policy-rc.d
saved_policy=
if [ -e "$policy" ]; then
	saved_policy=$policy.lease-provision
	cp -p "$policy" "$saved_policy"
fi
restore_policy() {
	if [ -n "$saved_policy" ]; then
		mv "$saved_policy" "$policy"
	else
		rm -f "$policy"
	fi
	trap - EXIT
}
trap restore_policy EXIT
trap 'exit 1' INT TERM
printf '#!/bin/sh\n# provision.sh: no service starts while an image is being built\nexit 101\n' >"$policy"
chmod 755 "$policy"

# Refresh the package lists only when something has to be downloaded: the package's
# own dependencies (from its Depends field) or LEASE_EXTRA_PACKAGES. A base image that
# already has them all is provisioned without touching the network.
depends=$(dpkg-deb --field "$deb" Depends | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/:any//; s/[[:space:]]//g')
missing=
for pkg in $depends $extra; do
	if ! dpkg-query --show --showformat='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed; then
		missing="$missing $pkg"
	fi
done
if [ -n "$missing" ]; then
	log "installing$missing (refreshing package lists)"
	apt_get update
fi
log "installing $(basename "$deb")"
# shellcheck disable=SC2086 # $extra is a list of package names
apt_get install --no-install-recommends "$deb" $extra

restore_policy

# 2. Enable the service (postinst already did; this makes the image's state explicit
#    and fails loudly if it did not work) and check what was installed.
systemctl enable leased.service
[ "$(systemctl is-enabled leased.service)" = enabled ] || { log "leased.service is not enabled"; exit 1; }
leased --version >&2
leased validate-config /etc/leased/config.yaml >&2

# 3. Clear instance-specific state.
log "clearing instance-specific state"
# The agent's own state: a deadline persisted here would be enforced on every
# instance booted from the image.
rm -rf /var/lib/leased/* /run/leased/*
# cloud-init: forget this instance, so the next boot is a first boot that runs the
# new instance's user-data (and regenerates SSH host keys).
if command -v cloud-init >/dev/null; then
	cloud-init clean --logs --seed
fi
# machine-id: empty, not absent, so systemd generates a new one at first boot and
# treats it as a first boot. D-Bus's copy must not survive either.
: >/etc/machine-id
if [ -f /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then
	rm -f /var/lib/dbus/machine-id
fi
# SSH host keys: every instance needs its own. cloud-init generates new ones at first
# boot; without cloud-init, have the SSH server generate missing keys before it starts.
rm -f /etc/ssh/ssh_host_*
if [ -d /etc/ssh ] && ! command -v cloud-init >/dev/null; then
	mkdir -p /etc/systemd/system/ssh.service.d
	cat >/etc/systemd/system/ssh.service.d/lease-host-keys.conf <<'EOF'
# Written by lease's ami/provision.sh: the image carries no SSH host keys, and without
# cloud-init nothing else creates them at first boot. The empty line resets the list,
# so the keys exist before the configuration test that needs them.
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
EOF
fi
# Keys the build itself used to log in (Packer's temporary key pair); each instance
# gets its own key pair from EC2 through cloud-init.
rm -f /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys
# The entropy seed saved on this machine is not each instance's own.
rm -f /var/lib/systemd/random-seed
# Logs, shell history and caches of the build.
rm -rf /var/log/journal/* /root/.bash_history /home/*/.bash_history
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' \) -delete
find /var/log -type f -exec truncate --size=0 {} +
apt-get clean
rm -rf /tmp/* /var/tmp/*

log "done: leased $(dpkg-query --show --showformat='${Version}' leased) installed and enabled"
