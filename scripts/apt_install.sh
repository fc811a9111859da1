#!/usr/bin/env bash
# Install Debian packages when this machine can (root with apt-get), else say what is missing.
# Never fails: each package only makes something faster or enables a skipped test.
#   bash scripts/apt_install.sh PACKAGE...
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${missing[@]}" >/dev/null 2>&1; } \
    || echo "apt: could not install ${missing[*]}"
else
  echo "apt: not installed (needs root and apt-get): ${missing[*]}"
fi
exit 0
