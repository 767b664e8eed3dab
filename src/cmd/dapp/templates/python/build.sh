#!/bin/sh
# Makes rootfs/, the image's files: this machine's python3 (the
# interpreter, the libraries it links and the standard library without
# tests, tk and pip) and main.py. `utter dapp test` and `utter dapp
# deploy` run this first. PYTHON=/path/to/python3 picks another one.
set -eu
py=$(readlink -f "${PYTHON:-/usr/bin/python3}")
if [ ! -x "$py" ]; then
    echo "build.sh needs python3 at /usr/bin/python3 (apt-get install python3) or PYTHON=/path" >&2
    exit 1
fi
version=$(basename "$py")          # python3.11
prefix=$(dirname "$(dirname "$py")")
rm -rf rootfs
mkdir -p rootfs/usr/bin rootfs/usr/lib rootfs/dapp
cp "$py" rootfs/usr/bin/python3
for lib in $(ldd "$py" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    mkdir -p "rootfs$(dirname "$lib")"
    cp -L "$lib" "rootfs$lib"
done
tar -C "$prefix/lib" -cf - \
    --exclude=test --exclude=tests --exclude=idlelib --exclude=tkinter \
    --exclude=turtledemo --exclude=ensurepip --exclude=lib2to3 --exclude=pydoc_data \
    --exclude=site-packages --exclude=dist-packages --exclude='config-*' \
    --exclude=__pycache__ --exclude=EXTERNALLY-MANAGED \
    "$version" | tar -C rootfs/usr/lib -xf -
cp main.py rootfs/dapp/main.py
