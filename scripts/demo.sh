#!/usr/bin/env bash
# The demo: a new chain with a signed genesis block (checked by utter and by
# git itself); a dapp image built from a directory, updated, exported for
# skopeo and unpacked (the update stores only what changed); then three versions of a disk image and two of a log file go
# into the chunk store; only what changed between versions is stored; every
# chunk is verified; a version is read back and compared.
set -euo pipefail
UTTER="$1"
DIR="$2"
rm -rf "$DIR"
mkdir -p "$DIR/files"
F="$DIR/files"
utter() { echo "\$ utter $*" >&2; "$UTTER" --data-dir "$DIR" "$@"; }

echo "== a new chain: node key, chunk store, ledger with a signed genesis block"
utter init --chain makerspace
utter log --graph
utter verify
if command -v git > /dev/null; then
    echo "== git itself checks the block's SSH signature"
    utter key show --allowed-signers > "$DIR/allowed_signers"
    echo "\$ git verify-commit main   (gpg.ssh.allowedSignersFile=$DIR/allowed_signers)" >&2
    git --git-dir "$DIR/ledger.git" -c gpg.ssh.allowedSignersFile="$DIR/allowed_signers" verify-commit main
fi

echo
echo "== a dapp image built from a directory (busybox and a shell script)"
APP="$DIR/hello-app"
mkdir -p "$APP/bin" "$APP/etc"
BUSYBOX=$(command -v busybox || true)
if [ -n "$BUSYBOX" ]; then cp "$BUSYBOX" "$APP/bin/busybox"; ln -sf busybox "$APP/bin/sh"; fi
printf '#!/bin/sh\necho hello from a dapp\n' > "$APP/bin/hello"; chmod 755 "$APP/bin/hello"
utter image build "$APP" --entrypoint /bin/hello --env GREETING=hi --tag hello:1
echo "== v2 changes one small file: only its chunk is new"
echo "motd v2" > "$APP/etc/motd"
utter image build "$APP" --entrypoint /bin/hello --env GREETING=hi --tag hello:2
utter image ls
utter image inspect hello:2
utter image export hello:2 "oci:$DIR/hello-oci:2"
if command -v skopeo > /dev/null; then
    echo "\$ skopeo inspect oci:$DIR/hello-oci:2   (reads what utter exported)" >&2
    skopeo inspect "oci:$DIR/hello-oci:2" | head -12
fi
utter image unpack hello:2 "$DIR/hello-rootfs"
ls -l "$DIR/hello-rootfs/bin"

echo
echo "== running containers: no network, read-only image, limits; exit codes pass through"
utter run hello:2 -- /bin/sh -c 'echo "in a container: hostname $(cat /proc/sys/kernel/hostname), pid $$"; exit 3' || echo "(exit code $?)"
utter run --timeout 500ms hello:2 -- /bin/sh -c 'while :; do :; done' || echo "(exit code $?)"

if [ -n "${COUNTER_BIN:-}" ] && [ -x "$COUNTER_BIN" ]; then
    echo
    echo "== the counter dapp (Rust, one static binary) applied to a block of transactions"
    utter image build --binary "$COUNTER_BIN" --tag counter
    mkdir -p "$DIR/counter-state"
    : > "$DIR/txs.jsonl"
    for n in 1 2 3; do
        printf '{"sig":"-","tx":{"action":"add","args":{"by":%s,"name":"visits"},"chain":"local","dapp":"counter","nonce":%s,"signer":"ssh-ed25519 AAAAdemo","time":1,"v":1}}\n' "$n" "$n" >> "$DIR/txs.jsonl"
    done
    printf '{"sig":"-","tx":{"action":"add","args":{"name":"Bad Name"},"chain":"local","dapp":"counter","nonce":4,"signer":"ssh-ed25519 AAAAdemo","time":1,"v":1}}\n' >> "$DIR/txs.jsonl"
    utter dapp run counter --state "$DIR/counter-state" --txs "$DIR/txs.jsonl"
    echo "counters/visits now holds $(cat "$DIR/counter-state/counters/visits")"
    utter dapp run counter --state "$DIR/counter-state" --entry test

    echo
    echo "== a chain running dapps: signed transactions become a block (one container per dapp)"
    C="$DIR/chain"
    chain() { echo "\$ utter --data-dir $C $*" >&2; "$UTTER" --data-dir "$C" "$@"; }
    chain image build --binary "$COUNTER_BIN" --tag counter > /dev/null
    chain init --chain makerspace --dapp counter=counter
    printf '%s\n' '{"dapp":"counter","action":"add","args":{"name":"visits","by":2}}' \
        '{"dapp":"counter","action":"add","args":{"name":"visits"}}' \
        '{"dapp":"counter","action":"add","args":{"name":"Bad Name"}}' \
        '{"dapp":"doors","action":"open","args":{}}' > "$DIR/requests.jsonl"
    chain tx sign --file "$DIR/requests.jsonl" > "$DIR/signed.jsonl"
    chain block propose --txs "$DIR/signed.jsonl"
    echo "== the same lines again: every nonce is used, so each is recorded as a rejected replay"
    chain block propose --txs "$DIR/signed.jsonl"
    chain log
    echo "== every block re-executed in containers gives exactly its state"
    chain verify --reexecute
    if command -v git > /dev/null; then
        echo "\$ git show main:dapps/counter/state/counters/visits   (the state is a git tree)" >&2
        git --git-dir "$C/ledger.git" show main:dapps/counter/state/counters/visits; echo
    fi
fi

echo
echo "== making a multi-version data set in $F"
head -c 96M /dev/urandom > "$F/image-v1.img"
# v2: a 4 KiB patch written into the middle, and 1 MiB inserted further on
part() { dd if="$F/image-v1.img" bs=1M iflag=skip_bytes,count_bytes skip="$1" count="$2" status=none; }
{ part 0 30M; head -c 4K /dev/urandom; part $((30*1048576 + 4096)) $((30*1048576 - 4096));
  head -c 1M /dev/urandom; part 60M 36M; } > "$F/image-v2.img"
# v3: v2 with 8 MiB appended
{ cat "$F/image-v2.img"; head -c 8M /dev/urandom; } > "$F/image-v3.img"
seq -f 'event %08g door=front badge=ok' 1 1500000 > "$F/access-v1.log"
{ cat "$F/access-v1.log"; seq -f 'event %08g door=shop badge=denied' 1500001 1600000; } > "$F/access-v2.log"
ls -l "$F"

echo
echo "== storing all five files"
echo "(each line: size, chunks, how many were new, and what the store grew by)"
cd "$F"
utter chunks put image-v1.img image-v2.img image-v3.img access-v1.log access-v2.log > "$DIR/manifests"
cd - > /dev/null

echo
echo "== what the store holds"
utter chunks stats

echo
echo "== verifying every chunk and manifest"
utter chunks verify

echo
echo "== reading image-v3 back"
V3=$(sed -n 3p "$DIR/manifests")
utter chunks get "$V3" -o "$DIR/restored-v3.img"
cmp "$DIR/restored-v3.img" "$F/image-v3.img" && echo "restored-v3.img is identical to image-v3.img"
echo
echo "demo data is in $DIR (try: $UTTER --data-dir $DIR show main; $UTTER --data-dir $DIR chunks --help)"
