"""{{name}}: an utter dapp in Python.

apply: each transaction `greet {"name": "Ada"}` appends the name to
       /state/guests and counts greetings in /state/greetings; its output
       is "hello, Ada". Names are 1-32 letters, digits, space, - or _.
test:  /state/greetings equals the number of lines in /state/guests.
"""

import json
import os
import re
import sys

STATE = os.environ.get("UTTER_STATE", "/state")
BLOCK = os.environ.get("UTTER_BLOCK", "/block")
NAME = re.compile(r"[A-Za-z0-9 _-]{1,32}\Z")


def read(path, default=""):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return default


def apply():
    count = int(read(f"{STATE}/greetings", "0").strip() or "0")
    results = []
    added = []
    with open(f"{BLOCK}/txs.jsonl", encoding="utf-8") as txs:
        for line in txs:
            if not line.strip():
                continue
            tx = json.loads(line)["tx"]
            name = (tx.get("args") or {}).get("name")
            if tx.get("action") != "greet":
                results.append({"status": "rejected", "reason": "unknown action: this dapp knows greet"})
            elif not isinstance(name, str) or not NAME.match(name):
                results.append(
                    {"status": "rejected", "reason": "args.name must be 1-32 letters, digits, space, - or _"}
                )
            else:
                count += 1
                added.append(name)
                results.append({"status": "accepted", "output": f"hello, {name}"})
    if added:
        with open(f"{STATE}/guests", "a", encoding="utf-8") as f:
            f.write("".join(n + "\n" for n in added))
    with open(f"{STATE}/greetings", "w", encoding="utf-8") as f:
        f.write(f"{count}\n")
    with open(f"{BLOCK}/results.jsonl", "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, separators=(",", ":"), sort_keys=True) + "\n" for r in results))


def test():
    count = int(read(f"{STATE}/greetings", "0").strip() or "0")
    lines = len(read(f"{STATE}/guests").splitlines())
    if count != lines:
        print(f"greetings says {count} but guests has {lines} lines", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    entry = sys.argv[1] if len(sys.argv) > 1 else ""
    if entry == "apply":
        apply()
    elif entry == "test":
        test()
    else:
        print("usage: main.py apply|test", file=sys.stderr)
        sys.exit(2)
