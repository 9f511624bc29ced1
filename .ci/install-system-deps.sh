#!/usr/bin/env bash
# System packages the tests need beyond Python wheels. Called by .ci/run before the tests.
#   openssh-server: the shipping tests' loopback "device" (tests/ship_support.py starts its own sshd
#   on 127.0.0.1 with throwaway keys; the tests skip, saying why, where sshd is missing)
#   openssh-client: ssh-keygen for those throwaway keys
#   espeak-ng: speech for the model corpus's voice-activity model (tests/corpus_inputs.py; synthesized
#   vowels stand in where it is missing)
set -euo pipefail
if { command -v sshd || [ -x /usr/sbin/sshd ]; } >/dev/null 2>&1 && command -v ssh-keygen >/dev/null 2>&1 \
    && command -v espeak-ng >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends openssh-server openssh-client espeak-ng
