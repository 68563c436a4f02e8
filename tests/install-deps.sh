#!/usr/bin/env bash
# Installs the system programs the tests run for real, on a fresh Debian machine.
# Idempotent: a machine that already has them does nothing here.
set -euo pipefail

# command -> the Debian package that provides it
declare -A need=(
  [tmux]=tmux
  [sshd]=openssh-server
  [ssh]=openssh-client
  [ssh-keygen]=openssh-client
)
missing=()
for cmd in "${!need[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
    missing+=("${need[$cmd]}")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "Installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi
