#!/bin/sh
# hello-sh: an utter dapp written in busybox sh, to keep "any language" true.
#
# apply: for each transaction `hello {"name": "Ada"}` it appends the name to
#        /state/guests and counts greetings in /state/greetings; the output
#        is "hello, Ada". Names are 1-32 of letters, digits, space, - and _.
# test:  /state/greetings is a number and equals the lines in /state/guests.
set -eu

field() { # field KEY LINE: the string value of "KEY":"..." in a JSON line
    printf '%s\n' "$2" | sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"
}

case "${1:-}" in
apply)
    count=$(cat /state/greetings 2>/dev/null || echo 0)
    while IFS= read -r line; do
        action=$(field action "$line")
        name=$(field name "$line")
        if [ "$action" != hello ]; then
            echo "{\"reason\":\"unknown action: expected hello\",\"status\":\"rejected\"}"
        elif ! printf '%s' "$name" | grep -Eq '^[A-Za-z0-9 _-]{1,32}$'; then
            echo '{"reason":"args.name must be 1-32 letters, digits, space, - or _","status":"rejected"}'
        else
            count=$((count + 1))
            printf '%s\n' "$name" >> /state/guests
            echo "{\"output\":\"hello, $name\",\"status\":\"accepted\"}"
        fi
    done < /block/txs.jsonl > /block/results.jsonl
    echo "$count" > /state/greetings
    ;;
test)
    count=$(cat /state/greetings 2>/dev/null || echo 0)
    lines=$(cat /state/guests 2>/dev/null | wc -l)
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
