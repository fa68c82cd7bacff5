#!/usr/bin/env bash
# Create (once) the pinned third-party environment outside the clone, keyed by a hash of
# requirements.txt, and a small per-clone .venv that layers on top of it and holds the editable
# `wsss` install. Clones share the 5 GB torch install; each clone imports its own src/.
# Idempotent: a second call with unchanged pins does nothing but check.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
pyver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
hash=$( (cat requirements.txt; echo "$pyver") | sha256sum | cut -c1-16)
cache=${WSSS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wsss}
shared="$cache/venv-$hash"
if [ ! -f "$shared/.complete" ]; then
    echo "[setup] building shared environment $shared (first time only)"
    rm -rf "$shared.tmp"
    "$PYTHON" -m venv "$shared.tmp"
    "$shared.tmp/bin/python" -m pip install --quiet --upgrade pip
    "$shared.tmp/bin/python" -m pip install --quiet -r requirements.txt
    rm -rf "$shared"
    mv "$shared.tmp" "$shared"
    # venv scripts carry absolute shebangs of the temporary path: rebuild from the final path
    # is not needed because only the per-clone .venv's entry points are used.
    touch "$shared/.complete"
fi
site_shared=$("$shared/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || true)
site_shared=${site_shared/venv-$hash.tmp/venv-$hash}
if [ ! -f ".venv/.wsss-$hash" ] || [ ! -e .venv/bin/ruff ]; then
    echo "[setup] creating per-clone .venv on top of $shared"
    rm -rf .venv
    "$PYTHON" -m venv --without-pip .venv
    site_local=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "import site; site.addsitedir('$site_shared')" > "$site_local/wsss_shared_env.pth"
    for tool in snakemake pytest pip; do
        printf '#!/bin/sh\nexec "$(dirname "$0")/python" -m %s "$@"\n' "$tool" > ".venv/bin/$tool"
        chmod +x ".venv/bin/$tool"
    done
    # ruff is a native binary (and `python -m ruff` would find this folder's shim and loop)
    ln -s "$shared/bin/ruff" .venv/bin/ruff
    touch ".venv/.wsss-$hash"
fi
# (re)install the package itself: cheap, and keeps entry points in step with pyproject.toml
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation --disable-pip-version-check -e . \
    >/dev/null
.venv/bin/python -c 'import torch, torchvision, pydensecrf.densecrf, pycocotools.mask, h5py, snakemake, wsss' \
    || { echo "[setup] environment check failed" >&2; exit 1; }
