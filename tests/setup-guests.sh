#!/bin/sh
# Install the Debian packages that carry the real 32-bit guests the scanner tests read
# (REFERENCE.md section 5).  tboot and grub-invaders run update-grub2 in postinst only when
# /boot/grub/grub.cfg exists (never in a container).
set -eu

PACKAGES="grub-invaders tboot grub-pc-bin syslinux-common"
command -v objdump >/dev/null 2>&1 || PACKAGES="$PACKAGES binutils"
# shellcheck disable=SC2086
exec sh "$(dirname "$0")/apt-install.sh" setup-guests $PACKAGES
