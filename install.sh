#!/usr/bin/env bash
# Installs phi_jax on this machine: bubblewrap (the evaluation sandbox, a system package) when
# missing, then the package with the given pip extras.
#   bash install.sh          # the main job: corpus, training, evaluation  (extras data,eval)
#   bash install.sh test     # everything the tests need                   (extras test)
set -euo pipefail
cd "$(dirname "$0")"
extras="${1:-data,eval}"
if ! command -v bwrap >/dev/null 2>&1; then
  echo "install.sh: installing bubblewrap for the evaluation sandbox" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq bubblewrap >/dev/null
fi
PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install -q -e ".[${extras}]"
