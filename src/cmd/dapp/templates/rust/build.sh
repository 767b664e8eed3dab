#!/bin/sh
# Makes rootfs/, the image's files: the dapp as one static executable
# (no libc in the image). `utter dapp test` and `utter dapp deploy` run
# this first.
set -eu
cargo rustc --release --quiet --target-dir target --bin {{name}} -- -C target-feature=+crt-static
rm -rf rootfs
mkdir -p rootfs/dapp
cp target/release/{{name}} rootfs/dapp/{{name}}
