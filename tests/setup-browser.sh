#!/bin/sh
# Install headless Chromium from Debian for the browser test (tests/test_notebooks.py, -m browser).
# Idempotent: does nothing when /usr/bin/chromium is there.  Never downloads a browser build of
# its own (Playwright's `install` is not used): the Debian package is the browser.
set -eu

[ -x /usr/bin/chromium ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "setup-browser: need root to install chromium" >&2
        exit 1
    fi
else
    SUDO=""
fi

APT="timeout 900 $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -q -y \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    -o Dpkg::Use-Pty=0 -o APT::Install-Recommends=false"

echo "setup-browser: installing chromium" >&2
$APT update >/dev/null </dev/null
$APT install chromium fonts-dejavu-core >/dev/null </dev/null
echo "setup-browser: done" >&2
