"""inventory: the space's items, how many are on the shelf and where,
who has some checked out, and what runs low.

State:
    items/<id>.json   {"id","name","location","quantity","min","out":{<member id>: n}}
    low-stock.json    [{"id","name","quantity","min"}], by id: items whose
                      quantity on the shelf is below their minimum

Actions (the signer must be an active member; add-item and restock need
the role admin or steward):
    add-item  {id, name, quantity, location, min?}   id: 1-64 of a-z 0-9 - _
    restock   {id, quantity}                         adds to the shelf
    move      {id, location}
    check-out {id, quantity?}                        takes from the shelf (default 1)
    return    {id, quantity?}                        at most what the signer has out

test: quantities are whole numbers, none below zero, every item is named
by its id, and low-stock.json is what the items say.
"""

import json
import os
import re
import sys

STATE = os.environ.get("UTTER_STATE", "/state")
BLOCK = os.environ.get("UTTER_BLOCK", "/block")
CHAIN = os.environ.get("UTTER_CHAIN", "/chain")
ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\Z")
STEWARDS = {"admin", "steward"}


class Rejected(Exception):
    pass


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def write_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(value, sort_keys=True, separators=(",", ":")) + "\n")


def active(key):
    """(record, member id) of an active member, else Rejected."""
    ident = None
    if isinstance(key, str) and key.startswith("ssh-ed25519 "):
        ident = key[len("ssh-ed25519 "):].rstrip("=").replace("/", "_").replace("+", "-")
    if ident and re.fullmatch(r"[A-Za-z0-9_-]{1,128}", ident):
        record = read_json(f"{CHAIN}/membership/members/{ident}.json")
        if record and record.get("status") == "active":
            return record, ident
    raise Rejected("the signer is not an active member")


def count(args, field, default=None):
    v = args.get(field, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise Rejected(f"args.{field} must be a whole number of at least 1")
    return v


def text(args, field):
    v = args.get(field)
    if not isinstance(v, str) or not 1 <= len(v) <= 120:
        raise Rejected(f"args.{field} must be 1-120 characters")
    return v


def item(args):
    i = args.get("id")
    if not isinstance(i, str) or not ID.match(i):
        raise Rejected("args.id must be 1-64 of a-z 0-9 - _")
    found = read_json(f"{STATE}/items/{i}.json")
    return i, found


def steward(record):
    if not STEWARDS & set(record.get("roles") or []):
        raise Rejected("only an admin or a steward does that")


def add_item(tx, args, record, _ident):
    steward(record)
    i, found = item(args)
    if found is not None:
        raise Rejected(f"there is an item {i!r} already; restock it")
    minimum = args.get("min", 0)
    if not isinstance(minimum, int) or isinstance(minimum, bool) or minimum < 0:
        raise Rejected("args.min must be a whole number of at least 0")
    quantity = args.get("quantity")
    if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 0:
        raise Rejected("args.quantity must be a whole number of at least 0")
    new = {"id": i, "name": text(args, "name"), "location": text(args, "location"),
           "quantity": quantity, "min": minimum, "out": {}}
    write_json(f"{STATE}/items/{i}.json", new)
    return {"id": i, "quantity": quantity}


def existing(args):
    i, found = item(args)
    if found is None:
        raise Rejected(f"there is no item {i!r}")
    return i, found


def restock(tx, args, record, _ident):
    steward(record)
    i, it = existing(args)
    it["quantity"] += count(args, "quantity")
    write_json(f"{STATE}/items/{i}.json", it)
    return {"id": i, "quantity": it["quantity"]}


def move(tx, args, _record, _ident):
    i, it = existing(args)
    it["location"] = text(args, "location")
    write_json(f"{STATE}/items/{i}.json", it)
    return {"id": i, "location": it["location"]}


def check_out(tx, args, _record, ident):
    i, it = existing(args)
    n = count(args, "quantity", 1)
    if n > it["quantity"]:
        raise Rejected(f"only {it['quantity']} of {it['name']} on the shelf")
    it["quantity"] -= n
    it["out"][ident] = it["out"].get(ident, 0) + n
    write_json(f"{STATE}/items/{i}.json", it)
    return {"id": i, "quantity": it["quantity"], "out": it["out"][ident]}


def give_back(tx, args, _record, ident):
    i, it = existing(args)
    n = count(args, "quantity", 1)
    have = it["out"].get(ident, 0)
    if n > have:
        raise Rejected(f"the signer has {have} of {it['name']} out")
    it["quantity"] += n
    if have == n:
        del it["out"][ident]
    else:
        it["out"][ident] = have - n
    write_json(f"{STATE}/items/{i}.json", it)
    return {"id": i, "quantity": it["quantity"], "out": have - n}


ACTIONS = {"add-item": add_item, "restock": restock, "move": move,
           "check-out": check_out, "return": give_back}


def items():
    d = f"{STATE}/items"
    names = sorted(os.listdir(d)) if os.path.isdir(d) else []
    return [(n, read_json(f"{d}/{n}")) for n in names]


def low_stock():
    return [{"id": it["id"], "name": it["name"], "quantity": it["quantity"], "min": it["min"]}
            for _, it in items() if it["quantity"] < it["min"]]


def apply():
    results = []
    touched = False
    with open(f"{BLOCK}/txs.jsonl", encoding="utf-8") as txs:
        for line in txs:
            if not line.strip():
                continue
            tx = json.loads(line)["tx"]
            action = ACTIONS.get(tx.get("action"))
            try:
                if action is None:
                    raise Rejected(
                        "unknown action: this dapp knows add-item, restock, move, check-out and return"
                    )
                record, ident = active(tx["signer"])
                out = action(tx, tx.get("args") or {}, record, ident)
                results.append({"status": "accepted", "output": out})
                touched = True
            except Rejected as why:
                results.append({"status": "rejected", "reason": str(why)})
    if touched:
        write_json(f"{STATE}/low-stock.json", low_stock())
    with open(f"{BLOCK}/results.jsonl", "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in results))


def fail(why):
    print(why, file=sys.stderr)
    sys.exit(1)


def test():
    for name, it in items():
        if name != f"{it.get('id')}.json":
            fail(f"items/{name} holds item {it.get('id')!r}")
        for field in ("quantity", "min"):
            v = it.get(field)
            if not isinstance(v, int) or v < 0:
                fail(f"item {it['id']}: {field} is {v!r}")
        if any(not isinstance(n, int) or n < 1 for n in it.get("out", {}).values()):
            fail(f"item {it['id']}: a checked-out count is not a whole number above 0")
    listed = read_json(f"{STATE}/low-stock.json")
    if (listed or []) != low_stock():
        fail("low-stock.json does not match the items")


if __name__ == "__main__":
    entry = sys.argv[1] if len(sys.argv) > 1 else ""
    if entry == "apply":
        apply()
    elif entry == "test":
        test()
    else:
        print("usage: main.py apply|test", file=sys.stderr)
        sys.exit(2)
