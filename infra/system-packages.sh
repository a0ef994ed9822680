#!/usr/bin/env bash
# `make install`'s first step: the system packages the service and tests run (arguments: Debian
# package names). Only missing ones are installed, with apt-get; on a machine without apt-get it
# names what to install and stops, instead of failing on the first command that is not there.
set -euo pipefail

# The commands each package provides: what is looked for where there is no dpkg to ask. None
# for libjemalloc2: the worker runs without it (slower with the faster-whisper engine), so it is
# not asked for there.
declare -A provides=([ffmpeg]="ffmpeg ffprobe" [redis-server]="redis-server" [espeak-ng]="espeak-ng" [libjemalloc2]="")
# Their names elsewhere (Homebrew; Fedora and most others use the Debian name, redis aside).
declare -A brew=([ffmpeg]=ffmpeg [redis-server]=redis [espeak-ng]=espeak-ng)

missing=()
for pkg in "$@"; do
  if command -v dpkg >/dev/null 2>&1; then
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    continue
  fi
  for cmd in ${provides[$pkg]-$pkg}; do
    command -v "$cmd" >/dev/null 2>&1 || { missing+=("$pkg"); break; }
  done
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  needed=() brewed=()
  for pkg in "${missing[@]}"; do
    needed+=("${provides[$pkg]:-$pkg}")
    brewed+=("${brew[$pkg]:-$pkg}")
  done
  echo "make: missing commands: ${needed[*]}" >&2
  echo "This machine has no apt-get; install them with its package manager, then run make again:" >&2
  echo "  macOS:  brew install ${brewed[*]}" >&2
  echo "  Fedora: sudo dnf install ${brewed[*]}" >&2
  exit 1
fi
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
