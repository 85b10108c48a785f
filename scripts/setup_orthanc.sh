#!/usr/bin/env bash
# Install what the PACS round-trip test needs (Debian / Ubuntu): Orthanc, its DICOMweb plugin and dicom3tools
# (dciodvfy, which validates the report SR).
#
#   scripts/setup_orthanc.sh
#
# Idempotent: packages already installed are left alone, and `apt-get update` runs only when something is missing and
# apt's package lists cannot offer it. Runs apt-get as root, or through sudo when that works without a password.
# Nothing is started, and the package's own Orthanc service is kept off: the test starts its own Orthanc (own
# configuration, 127.0.0.1 only, temporary storage).
set -euo pipefail

PACKAGES=(orthanc orthanc-dicomweb dicom3tools)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for package in "${PACKAGES[@]}"; do
    installed "$package" || missing+=("$package")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "orthanc, orthanc-dicomweb and dicom3tools are installed"
    exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "missing ${missing[*]}, and neither root nor password-less sudo: install them with apt-get" >&2
    exit 1
fi
command -v apt-get >/dev/null || { echo "missing ${missing[*]}, and no apt-get on this system" >&2; exit 1; }

start=$SECONDS
export DEBIAN_FRONTEND=noninteractive
# update the package lists only when one of the packages has no installation candidate in them
for package in "${missing[@]}"; do
    if ! apt-cache policy "$package" 2>/dev/null | grep -q "Candidate: [^(]"; then
        "${SUDO[@]}" apt-get update -qq
        break
    fi
done
# The Debian package would start its own Orthanc service (port 8042, DICOM port 4242 on every interface): keep it
# from starting during the installation (policy-rc.d, removed afterwards) and from starting at boot.
POLICY=/usr/sbin/policy-rc.d
if [[ ! -e $POLICY ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    trap '"${SUDO[@]}" rm -f "$POLICY"' EXIT
fi
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
if [[ -d /run/systemd/system ]]; then
    "${SUDO[@]}" systemctl disable --now orthanc >/dev/null 2>&1 || true
fi
for package in "${missing[@]}"; do
    installed "$package" || { echo "$package did not install" >&2; exit 1; }
done
echo "== installed ${missing[*]} in $((SECONDS - start)) s =="
