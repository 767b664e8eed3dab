"""reservations: members book a tool or a room for a time slot.

State:
    bookings/<resource>/<from>.json   {"member","name","resource","from","to"}

A resource is a door or tool the doors dapp defines; booking one that
needs certifications (the door's "certs") needs each of them, valid to the
end of the slot. While a booking lasts, the doors dapp opens that door for
the booker only (a booked tool's lockout honours the booking).

Actions (the signer must be an active member):
    book   {resource, from, to}   Unix seconds, to > from, at most 8 hours,
                                  starting now or later, at most 90 days
                                  ahead; overlapping bookings are rejected
    cancel {resource, from}       by the booker or an active admin

Bookings that have ended are dropped as blocks pass. test: every booking
is well formed, named by its start, and no two of a resource overlap.
"""

import json
import os
import re
import sys

STATE = os.environ.get("UTTER_STATE", "/state")
BLOCK = os.environ.get("UTTER_BLOCK", "/block")
CHAIN = os.environ.get("UTTER_CHAIN", "/chain")
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\Z")
MAX_SLOT = 8 * 3600
MAX_AHEAD = 90 * 86400


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


def member(key):
    """The membership dapp's record of `key`, or None."""
    if not isinstance(key, str) or not key.startswith("ssh-ed25519 "):
        return None
    ident = key[len("ssh-ed25519 "):].rstrip("=").replace("/", "_").replace("+", "-")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", ident):
        return None
    return read_json(f"{CHAIN}/membership/members/{ident}.json"), ident


def active(key):
    found = member(key)
    if not found or not found[0] or found[0].get("status") != "active":
        raise Rejected("the signer is not an active member")
    return found


def bookings(resource):
    """(from, booking) of `resource`, in start order, as the state holds them."""
    d = f"{STATE}/bookings/{resource}"
    try:
        names = sorted(os.listdir(d), key=lambda n: int(n.split(".")[0]))
    except FileNotFoundError:
        return []
    return [(int(n.split(".")[0]), read_json(f"{d}/{n}")) for n in names]


def seconds(args, field):
    v = args.get(field)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise Rejected(f"args.{field} must be a time in Unix seconds")
    return v


def resource_of(args):
    r = args.get("resource")
    if not isinstance(r, str) or not NAME.match(r):
        raise Rejected("args.resource must name a door or tool")
    door = read_json(f"{CHAIN}/doors/doors/{r}.json")
    if door is None:
        raise Rejected(f"there is no door or tool {r!r} (the doors dapp defines them)")
    return r, door


def book(tx, now):
    args = tx.get("args") or {}
    record, ident = active(tx["signer"])
    resource, door = resource_of(args)
    start, end = seconds(args, "from"), seconds(args, "to")
    if end <= start:
        raise Rejected("args.to must be after args.from")
    if end - start > MAX_SLOT:
        raise Rejected("a booking lasts at most 8 hours")
    if start < now:
        raise Rejected("a booking cannot start in the past")
    if start > now + MAX_AHEAD:
        raise Rejected("a booking starts at most 90 days ahead")
    for tool in door.get("certs") or []:
        cert = read_json(f"{CHAIN}/certifications/certs/{ident}/{tool}.json")
        if cert is None:
            raise Rejected(f"{resource} needs the {tool} certification")
        expires = cert.get("expires")
        if expires is not None and expires < end:
            raise Rejected(f"the {tool} certification expires before the booking ends")
    for other_start, other in bookings(resource):
        if start < other["to"] and other_start < end:
            raise Rejected(
                f"{resource} is booked by {other['name']} from {other_start} to {other['to']}"
            )
    write_json(
        f"{STATE}/bookings/{resource}/{start}.json",
        {"member": tx["signer"], "name": record["name"], "resource": resource,
         "from": start, "to": end},
    )
    return {"resource": resource, "from": start, "to": end}


def cancel(tx, _now):
    args = tx.get("args") or {}
    record, _ = active(tx["signer"])
    resource, _door = resource_of(args)
    start = seconds(args, "from")
    path = f"{STATE}/bookings/{resource}/{start}.json"
    booking = read_json(path)
    if booking is None:
        raise Rejected(f"{resource} has no booking from {start}")
    is_admin = "admin" in (record.get("roles") or [])
    if booking["member"] != tx["signer"] and not is_admin:
        raise Rejected("only the booker or an admin cancels a booking")
    os.remove(path)
    return {"resource": resource, "from": start}


def prune(now):
    """Drops the bookings that have ended."""
    root = f"{STATE}/bookings"
    for resource in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        for start, booking in bookings(resource):
            if booking["to"] <= now:
                os.remove(f"{root}/{resource}/{start}.json")
        if not os.listdir(f"{root}/{resource}"):
            os.rmdir(f"{root}/{resource}")


ACTIONS = {"book": book, "cancel": cancel}


def apply():
    with open(f"{BLOCK}/context.json", encoding="utf-8") as f:
        now = json.load(f)["time"]
    prune(now)
    results = []
    with open(f"{BLOCK}/txs.jsonl", encoding="utf-8") as txs:
        for line in txs:
            if not line.strip():
                continue
            tx = json.loads(line)["tx"]
            action = ACTIONS.get(tx.get("action"))
            try:
                if action is None:
                    raise Rejected("unknown action: this dapp knows book and cancel")
                results.append({"status": "accepted", "output": action(tx, now)})
            except Rejected as why:
                results.append({"status": "rejected", "reason": str(why)})
    with open(f"{BLOCK}/results.jsonl", "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in results))


def test():
    root = f"{STATE}/bookings"
    for resource in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        last_end = None
        for start, b in bookings(resource):
            if b.get("from") != start or b.get("resource") != resource or not b.get("to", 0) > start:
                print(f"bookings/{resource}/{start}.json is not a booking of its name", file=sys.stderr)
                sys.exit(1)
            if last_end is not None and start < last_end:
                print(f"bookings of {resource} overlap at {start}", file=sys.stderr)
                sys.exit(1)
            last_end = b["to"]


if __name__ == "__main__":
    entry = sys.argv[1] if len(sys.argv) > 1 else ""
    if entry == "apply":
        apply()
    elif entry == "test":
        test()
    else:
        print("usage: main.py apply|test", file=sys.stderr)
        sys.exit(2)
