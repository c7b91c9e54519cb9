#!/bin/sh
# Install the Debian packages that carry the real 32-bit guests the scanner tests read
# (REFERENCE.md section 5).  Idempotent: does nothing when everything is already there.
#
# Never prompts: noninteractive debconf, keep existing conffiles, stdin from /dev/null.
# tboot and grub-invaders run update-grub2 in postinst only when /boot/grub/grub.cfg exists
# (never in a container); a time limit stops any hook from hanging the build, and a concurrent
# apt run (another checkout's `make test`) is waited for rather than failed on.
set -eu

PACKAGES="grub-invaders tboot grub-pc-bin syslinux-common"
command -v objdump >/dev/null 2>&1 || PACKAGES="$PACKAGES binutils"

missing=""
for p in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "setup-guests: need root to install:$missing" >&2
        exit 1
    fi
else
    SUDO=""
fi

export DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true
APT="timeout 900 $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -q -y \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    -o Dpkg::Use-Pty=0 -o APT::Install-Recommends=false -o DPkg::Lock::Timeout=300"

echo "setup-guests: installing$missing" >&2
$APT update >/dev/null </dev/null
# shellcheck disable=SC2086
$APT install $missing >/dev/null </dev/null
echo "setup-guests: done" >&2
