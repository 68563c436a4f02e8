#!/bin/sh
# Fails when an ELF binary needs a newer glibc than the one it will run on.
#
#   packaging/check-glibc.sh BINARY [MAX]
#
#   MAX  the newest glibc allowed, as MAJOR.MINOR (default 2.34: Lambda's
#        provided.al2023 runtime, Amazon Linux 2023's glibc).
#
# Reads the binary's dynamic symbol table (`objdump -T`, from binutils) and compares
# every GLIBC_x.y version a symbol is bound to with MAX. On failure, lists each symbol
# that needs more (stderr) and exits 1; on success prints the newest version needed.
set -eu

usage() {
	sed -n '2,11s/^# \{0,1\}//p' "$0" >&2
	exit 2
}

[ $# -ge 1 ] && [ $# -le 2 ] || usage
binary=$1
max=${2:-2.34}

case "$max" in
*[!0-9.]* | "" | .* | *.) echo "check-glibc.sh: MAX '$max' is not a version like 2.34" >&2; exit 2 ;;
esac
if [ ! -f "$binary" ]; then
	echo "check-glibc.sh: '$binary' does not exist" >&2
	exit 2
fi
if ! command -v objdump >/dev/null; then
	echo "check-glibc.sh: objdump is missing (Debian package binutils)" >&2
	exit 2
fi

# Lines look like: 0000… DF *UND* 0000… (GLIBC_2.34) __libc_start_main
# (older binutils print the version without parentheses).
symbols=$(objdump -T "$binary" | sed -n 's/.*[ (]GLIBC_\([0-9][0-9.]*\))\{0,1\}[ ]\{1,\}\([^ ]*\)$/\1 \2/p')
if [ -z "$symbols" ]; then
	echo "check-glibc.sh: '$binary' binds no glibc-versioned symbol (not a dynamic glibc binary?)" >&2
	exit 2
fi

# Version comparison with `sort -V`: v is newer than max when it sorts after it.
newer=$(printf '%s\n' "$symbols" | while read -r version symbol; do
	if [ "$version" != "$max" ] &&
		[ "$(printf '%s\n%s\n' "$max" "$version" | sort -V | tail -n 1)" = "$version" ]; then
		echo "  $symbol needs GLIBC_$version"
	fi
done)
if [ -n "$newer" ]; then
	echo "check-glibc.sh: '$binary' needs a glibc newer than $max:" >&2
	printf '%s\n' "$newer" | sort -u >&2
	exit 1
fi
printf '%s\n' "$symbols" | cut -d' ' -f1 | sort -uV | tail -n 1
