#!/usr/bin/env bash
# Real aarch64 execution of an ORT-format engine under QEMU user-mode emulation.
#
#   scripts/arm64-emulated.sh setup [ROOT]        build (once) a Debian bookworm arm64 root with the
#                                                 aarch64 onnxruntime wheel in /opt/ec (a venv)
#   scripts/arm64-emulated.sh run ROOT JOB_DIR    run JOB_DIR/job.py with that venv's python inside ROOT;
#                                                 JOB_DIR is copied in and its results copied back
#   scripts/arm64-emulated.sh                     setup, then the opt-in test and the digits benchmark on arm64
#                                                 (add ResNet-18: python3 benchmarks/targets.py --targets arm64)
#
# Needs root (debootstrap, chroot, mount) and network access to deb.debian.org and PyPI.
# First setup takes ~5+ minutes and ~0.6 GB. Latencies measured here are EMULATED: they say
# nothing about a real ARM board's speed, only that the aarch64 build runs and agrees with x86.
set -euo pipefail

DEFAULT_ROOT="${EDGECOMPRESS_ARM64_ROOT:-${EDGECOMPRESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgecompress}/arm64-root}"
ORT_VERSION="${EDGECOMPRESS_ARM64_ORT:-$(python3 -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null || true)}"
SUITE=bookworm

log() { echo "[arm64-emulated] $*" >&2; }
die() { echo "[arm64-emulated] error: $*" >&2; exit 2; }

need_root() {
  [ "$(id -u)" = 0 ] || die "needs root for debootstrap/chroot/mount — run it with sudo"
}

install_host_tools() {
  if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null \
     || ! command -v update-binfmts >/dev/null; then
    log "installing qemu-user-static debootstrap binfmt-support"
    apt-get install -y qemu-user-static debootstrap binfmt-support >/dev/null \
      || { apt-get update >/dev/null && apt-get install -y qemu-user-static debootstrap binfmt-support >/dev/null; }
  fi
}

enable_binfmt() {
  # containers often start without binfmt_misc mounted; the kernel needs it to hand
  # aarch64 ELF files to qemu-aarch64-static
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc"
  fi
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    update-binfmts --enable qemu-aarch64 || die "cannot register qemu-aarch64 with binfmt_misc"
  fi
}

with_proc() {
  # mount /proc only: onnxruntime crashed under QEMU when /sys was visible in the chroot
  local root=$1; shift
  mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
  trap "umount '$root/proc' 2>/dev/null || true" EXIT
  "$@"
}

setup_root() {
  local root=${1:-$DEFAULT_ROOT}
  need_root; install_host_tools; enable_binfmt
  if [ ! -e "$root/.debootstrap-done" ]; then
    local partial="$root.partial"
    rm -rf "$partial"; mkdir -p "$(dirname "$root")"
    log "debootstrap --arch=arm64 $SUITE into $partial (several minutes)"
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,python3-pip \
      "$SUITE" "$partial" http://deb.debian.org/debian >"$partial.log" 2>&1 \
      || die "debootstrap failed, see $partial.log"
    touch "$partial/.debootstrap-done"
    rm -rf "$root"; mv "$partial" "$root"; rm -f "$partial.log"
  fi
  # pip inside the root verifies TLS with the host's CA bundle and resolves with its DNS
  mkdir -p "$root/etc/ssl/certs"
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  if [ ! -e "$root/opt/ec/.ready-$ORT_VERSION" ]; then
    local spec="onnxruntime${ORT_VERSION:+==$ORT_VERSION}"
    log "installing $spec (aarch64 wheel) into $root/opt/ec"
    with_proc "$root" chroot "$root" /bin/sh -c "
      set -e; python3 -m venv /opt/ec
      /opt/ec/bin/pip install --quiet --disable-pip-version-check '$spec' numpy
      rm -f /opt/ec/.ready-*; touch /opt/ec/.ready-$ORT_VERSION" >&2
  fi
  echo "$root"
}

run_job() {
  local root=$1 job=$2
  need_root; enable_binfmt
  [ -e "$root/opt/ec/bin/python" ] || die "$root has no /opt/ec venv: run '$0 setup $root' first"
  local inside="/tmp/ec-job.$$"
  rm -rf "$root$inside"; cp -r "$job" "$root$inside"
  with_proc "$root" chroot "$root" /opt/ec/bin/python "$inside/job.py" "$inside"
  cp -r "$root$inside/." "$job/"; rm -rf "$root$inside"
}

case "${1:-all}" in
  setup) setup_root "${2:-$DEFAULT_ROOT}" ;;
  run) [ $# -eq 3 ] || die "usage: $0 run ROOT JOB_DIR"; run_job "$2" "$3" ;;
  all)
    root=$(setup_root "$DEFAULT_ROOT")
    cd "$(dirname "$0")/.."
    EDGECOMPRESS_ARM64=1 EDGECOMPRESS_ARM64_ROOT="$root" python3 -m pytest -q -m arm64_emulated tests/test_arm_engine.py
    EDGECOMPRESS_ARM64_ROOT="$root" python3 benchmarks/targets.py --targets arm64 --models digits ;;
  *) die "usage: $0 [setup [ROOT] | run ROOT JOB_DIR]" ;;
esac
