#!/usr/bin/env bash
# Installs what building and testing entrovid needs on a fresh Debian/Ubuntu machine with Rust.
# Idempotent: packages already present are not reinstalled, an existing venv is reused.
set -euo pipefail

SYSTEM_PACKAGES=(pkg-config clang libclang-dev libssl-dev libavcodec-dev libavformat-dev
  libavutil-dev libswscale-dev libswresample-dev libavfilter-dev libavdevice-dev ffmpeg)

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

command -v cargo >/dev/null || { echo "setup.sh: Rust (cargo) is required: https://rustup.rs" >&2; exit 1; }
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi

# Python tools used by the test suite (API fuzzing from openapi.yaml). Kept in a venv outside the
# clone so CI runs reuse it.
VENV=${ENTROVID_TOOLS_VENV:-/var/tmp/entrovid-tools-venv}
if [ ! -x "$VENV/bin/schemathesis" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r "$(dirname "$0")/../tools/requirements-test.txt"
fi
