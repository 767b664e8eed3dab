#!/bin/sh
# {{name}}: an utter dapp in busybox sh.
#
# apply: each transaction `greet {"name": "Ada"}` appends the name to
#        /state/guests and counts greetings in /state/greetings; its output
#        is "hello, Ada". Names are 1-32 letters, digits, space, - or _.
# test:  /state/greetings equals the number of lines in /state/guests.
set -eu
STATE=${UTTER_STATE:-/state}
BLOCK=${UTTER_BLOCK:-/block}

field() { # field KEY LINE: the string value of "KEY":"..." in a JSON line
    printf '%s\n' "$2" | sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"
}

case "${1:-}" in
apply)
    count=$(cat "$STATE/greetings" 2>/dev/null || echo 0)
    while IFS= read -r line; do
        [ -n "$line" ] || continue
        action=$(field action "$line")
        name=$(field name "$line")
        if [ "$action" != greet ]; then
            echo '{"reason":"unknown action: this dapp knows greet","status":"rejected"}'
        elif ! printf '%s' "$name" | grep -Eq '^[A-Za-z0-9 _-]{1,32}$'; then
            echo '{"reason":"args.name must be 1-32 letters, digits, space, - or _","status":"rejected"}'
        else
            count=$((count + 1))
            printf '%s\n' "$name" >> "$STATE/guests"
            echo "{\"output\":\"hello, $name\",\"status\":\"accepted\"}"
        fi
    done < "$BLOCK/txs.jsonl" > "$BLOCK/results.jsonl"
    echo "$count" > "$STATE/greetings"
    ;;
test)
    count=$(cat "$STATE/greetings" 2>/dev/null || echo 0)
    lines=$(cat "$STATE/guests" 2>/dev/null | wc -l)
    if [ "$count" -ne "$lines" ]; then
        echo "greetings says $count but guests has $lines lines" >&2
        exit 1
    fi
    ;;
*)
    echo "usage: main.sh apply|test" >&2
    exit 2
    ;;
esac
