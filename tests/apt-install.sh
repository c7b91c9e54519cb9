#!/bin/sh
# apt-install.sh NAME PACKAGE...: install the Debian packages not yet installed, for the set-up
# script NAME (tests/setup-guests.sh, tests/setup-emulators.sh).  Idempotent: does nothing when
# everything is already there.
#
# Never prompts: noninteractive debconf, keep existing conffiles, stdin from /dev/null; no
# recommends; a time limit stops any package hook from hanging the build, and a concurrent apt
# run (another checkout's `make test`) is waited for rather than failed on.
set -eu

name=$1
shift
missing=""
for p in "$@"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "$name: need root to install:$missing" >&2
        exit 1
    fi
else
    SUDO=""
fi

export DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true
APT="timeout 900 $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -q -y \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    -o Dpkg::Use-Pty=0 -o APT::Install-Recommends=false -o DPkg::Lock::Timeout=300"

echo "$name: installing$missing" >&2
$APT update >/dev/null </dev/null
# shellcheck disable=SC2086
$APT install $missing >/dev/null </dev/null
echo "$name: done" >&2
