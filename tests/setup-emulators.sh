#!/bin/sh
# Install the Debian packages of the full-system emulators the oracle tests boot
# (REFERENCE.md section 6): QEMU (TCG) and Bochs 2.7 with its BIOS and VGA BIOS.  No recommends
# (apt-install.sh): Bochs would pull in an X11 display stack it does not need headless.
set -eu

exec sh "$(dirname "$0")/apt-install.sh" setup-emulators qemu-system-x86 bochs bochsbios vgabios
