#!/bin/sh
# Makes rootfs/, the image's files: a static busybox and main.sh.
# `utter dapp test` and `utter dapp deploy` run this first.
set -eu
bb=${BUSYBOX:-$(command -v busybox || true)}
if [ -z "$bb" ]; then
    echo "build.sh needs a static busybox: apt-get install busybox-static, or set BUSYBOX=/path/to/busybox" >&2
    exit 1
fi
rm -rf rootfs
mkdir -p rootfs/bin rootfs/dapp
cp "$bb" rootfs/bin/busybox
for tool in sh cat echo grep sed wc printf; do
    ln -s busybox "rootfs/bin/$tool"
done
cp main.sh rootfs/dapp/main.sh
