#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Print the ABI name of the guest kernel (e.g. 6.12.95+deb12-amd64): the
# Debian bookworm-backports kernel whose headers the driver builds against
# and whose image the guest boots. Installs linux-headers-amd64 from
# bookworm-backports first if needed (about 2 minutes, once).
#
# The ABI is discovered from the installed headers, never hard-coded.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
"$here/install-host-deps.sh"

SUDO=()
[[ $(id -u) -eq 0 ]] || SUDO=(sudo)

abi_of_installed() {
    dpkg-query -W -f='${Depends}\n' linux-headers-amd64 2>/dev/null |
        tr ',' '\n' | sed -n 's/^ *linux-headers-\([^ ]*-amd64\).*/\1/p' | head -1
}

abi=$(abi_of_installed || true)
if [[ -z $abi ]] || [[ ! -d /usr/src/linux-headers-$abi ]]; then
    echo "guest-kernel-abi: installing linux-headers-amd64 from bookworm-backports (Linux 6.12; about 2 minutes)" >&2
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -t bookworm-backports linux-headers-amd64 >&2
    abi=$(abi_of_installed)
fi
if [[ -z $abi ]] || [[ ! -d /usr/src/linux-headers-$abi ]]; then
    echo "guest-kernel-abi: cannot find the headers of the bookworm-backports kernel" >&2
    exit 1
fi
echo "$abi"
