use super::*;

use utter_dapp_sdk::test_key as key;

fn ctx(height: u64) -> Context {
    Context {
        chain: "c".into(),
        dapp: "accounting".into(),
        entry: "apply".into(),
        height,
        time: 1_000_000 + height,
        parent: "p".into(),
        proposer: "k".into(),
    }
}

struct World {
    _dirs: (tempfile::TempDir, tempfile::TempDir, tempfile::TempDir),
    members: State,
    books: State,
    leases: State,
    height: u64,
}

const TREASURER_KEY: u8 = 1;
const ALICE: u8 = 2;
const BOB: u8 = 3;
const SUE: u8 = 4;

/// Ada (admin, treasurer), Alice, Bob, and Sue (suspended).
fn world() -> World {
    let dirs = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let mut members = State::at(dirs.0.path());
    let admin = key(TREASURER_KEY);
    for t in [
        Tx::new(
            &admin,
            "add-member",
            json!({"key": admin, "name": "Ada", "roles": ["admin", "treasurer"],
                   "salt": "00112233445566778899aabbccddeeff"}),
        ),
        Tx::new(
            &admin,
            "add-member",
            json!({"key": key(ALICE), "name": "Alice"}),
        ),
        Tx::new(
            &admin,
            "add-member",
            json!({"key": key(BOB), "name": "Bob"}),
        ),
        Tx::new(
            &admin,
            "add-member",
            json!({"key": key(SUE), "name": "Sue"}),
        ),
        Tx::new(&admin, "suspend", json!({"key": key(SUE)})),
    ] {
        let out = utter_membership::apply(&t, &mut members).expect("apply");
        assert!(matches!(out, Outcome::Accepted(_)), "{out:?}");
        members.flush().expect("flush");
    }
    let books = State::at(dirs.1.path());
    let leases = State::at(dirs.2.path());
    World {
        _dirs: dirs,
        members,
        books,
        leases,
        height: 0,
    }
}

impl World {
    /// Applies one transaction as its own block; "accepted" or the reason.
    fn run(&mut self, signer: u8, action: &str, args: Value) -> String {
        self.height += 1;
        let out = apply(
            &ctx(self.height),
            &Tx::new(&key(signer), action, args),
            &mut self.books,
            Chain {
                members: &mut self.members,
                leases: &mut self.leases,
            },
        )
        .expect("apply");
        self.books.flush().expect("flush");
        test(&mut self.books).expect("the books balance after every transaction");
        match out {
            Outcome::Accepted(_) => "accepted".into(),
            Outcome::Rejected(r) => r,
        }
    }

    fn balance(&mut self, n: u8) -> u64 {
        balance(&mut self.books, &key(n)).expect("balance")
    }
}

fn expect(got: String, want: &str) {
    assert!(got.contains(want), "{got:?} (expected {want:?})");
}

#[test]
fn treasurers_mint_and_members_transfer_without_overdrawing() {
    let mut w = world();
    expect(
        w.run(ALICE, "mint", json!({"to": key(ALICE), "amount": 5})),
        "only a treasurer may mint",
    );
    expect(
        w.run(
            TREASURER_KEY,
            "mint",
            json!({"to": key(ALICE), "amount": 100}),
        ),
        "accepted",
    );
    expect(
        w.run(TREASURER_KEY, "mint", json!({"to": key(SUE), "amount": 1})),
        "is suspended",
    );
    expect(
        w.run(
            TREASURER_KEY,
            "mint",
            json!({"to": key(ALICE), "amount": 0}),
        ),
        "between 1 and",
    );
    expect(
        w.run(
            TREASURER_KEY,
            "mint",
            json!({"to": key(ALICE), "amount": -3}),
        ),
        "whole number",
    );
    expect(
        w.run(ALICE, "transfer", json!({"to": key(BOB), "amount": 101})),
        "Alice has 100 CR, which is less than 101 CR",
    );
    expect(
        w.run(
            ALICE,
            "transfer",
            json!({"to": key(BOB), "amount": 40, "memo": "paint"}),
        ),
        "accepted",
    );
    expect(
        w.run(ALICE, "transfer", json!({"to": key(ALICE), "amount": 1})),
        "to yourself",
    );
    expect(
        w.run(ALICE, "transfer", json!({"to": key(9), "amount": 1})),
        "is not a member",
    );
    expect(
        w.run(SUE, "transfer", json!({"to": key(BOB), "amount": 1})),
        "the signer Sue is suspended",
    );
    expect(w.run(ALICE, "steal", json!({})), "unknown action \"steal\"");
    assert_eq!((w.balance(ALICE), w.balance(BOB)), (60, 40));
    let j = journal(&mut w.books).expect("journal");
    assert_eq!(j.len(), 2, "only accepted transactions are entries");
    assert_eq!(j[1].memo, "paint");
    for e in &j {
        assert_eq!(e.postings.iter().map(|(_, n)| n).sum::<i64>(), 0, "{e:?}");
    }
}

#[test]
fn escrows_hold_and_release_credits() {
    let mut w = world();
    w.run(
        TREASURER_KEY,
        "mint",
        json!({"to": key(ALICE), "amount": 50}),
    );
    expect(
        w.run(
            ALICE,
            "escrow-open",
            json!({"name": "lease-1", "payee": key(BOB), "amount": 60}),
        ),
        "less than 60",
    );
    expect(
        w.run(
            ALICE,
            "escrow-open",
            json!({"name": "Lease 1", "payee": key(BOB), "amount": 5}),
        ),
        "args.name",
    );
    expect(
        w.run(
            ALICE,
            "escrow-open",
            json!({"name": "lease-1", "payee": key(BOB), "amount": 30}),
        ),
        "accepted",
    );
    expect(
        w.run(
            ALICE,
            "escrow-open",
            json!({"name": "lease-1", "payee": key(BOB), "amount": 1}),
        ),
        "already open",
    );
    assert_eq!(w.balance(ALICE), 20);
    expect(
        w.run(BOB, "escrow-release", json!({"name": "lease-1", "pay": 30})),
        "only the payer or a treasurer",
    );
    expect(
        w.run(
            ALICE,
            "escrow-release",
            json!({"name": "lease-1", "pay": 31}),
        ),
        "holds 30 CR",
    );
    expect(
        w.run(
            ALICE,
            "escrow-release",
            json!({"name": "lease-1", "pay": 12}),
        ),
        "accepted",
    );
    assert_eq!((w.balance(ALICE), w.balance(BOB)), (38, 12));
    expect(
        w.run(
            ALICE,
            "escrow-release",
            json!({"name": "lease-1", "pay": 0}),
        ),
        "no open escrow",
    );
}

#[test]
fn dues_extend_paid_until_from_the_later_of_now_and_the_old_date() {
    let mut w = world();
    w.run(
        TREASURER_KEY,
        "mint",
        json!({"to": key(ALICE), "amount": 100}),
    );
    expect(
        w.run(ALICE, "pay-dues", json!({"months": 1})),
        "not set the dues",
    );
    expect(
        w.run(ALICE, "set-dues", json!({"per_month": 20})),
        "only a treasurer",
    );
    expect(
        w.run(TREASURER_KEY, "set-dues", json!({"per_month": 20})),
        "accepted",
    );
    expect(w.run(ALICE, "pay-dues", json!({"months": 0})), "1-24");
    expect(
        w.run(ALICE, "pay-dues", json!({"months": 6})),
        "less than 120",
    );
    let h = w.height + 1;
    expect(w.run(ALICE, "pay-dues", json!({"months": 2})), "accepted");
    let first = ctx(h).time + 2 * MONTH;
    assert_eq!(
        paid_until(&mut w.books, &key(ALICE)).expect("read"),
        Some(first)
    );
    expect(
        w.run(ALICE, "pay-dues", json!({"months": 1, "member": key(BOB)})),
        "accepted",
    );
    expect(w.run(ALICE, "pay-dues", json!({"months": 1})), "accepted");
    assert_eq!(
        paid_until(&mut w.books, &key(ALICE)).expect("read"),
        Some(first + MONTH),
        "paying early extends from the old date"
    );
    assert_eq!(w.balance(ALICE), 20);
    assert_eq!(
        totals(&mut w.books).expect("totals"),
        Totals {
            issued: 100,
            dues: 80
        }
    );
}

#[test]
fn damaged_books_fail_the_test() {
    let mut w = world();
    w.run(
        TREASURER_KEY,
        "mint",
        json!({"to": key(ALICE), "amount": 10}),
    );
    let id = key_id(&key(ALICE)).expect("id");
    w.books
        .put_json(
            &balance_path(&id),
            &json!({"key": key(ALICE), "balance": -5}),
        )
        .expect("put");
    let err = test(&mut w.books).expect_err("a negative balance");
    assert!(err.to_string().contains("non-negative"), "{err}");
    w.books
        .put_json(
            &balance_path(&id),
            &json!({"key": key(ALICE), "balance": 11}),
        )
        .expect("put");
    let err = test(&mut w.books).expect_err("credits from nowhere");
    assert!(err.to_string().contains("do not balance"), "{err}");
}

impl World {
    /// Writes the leases dapp's settle record for `name`.
    fn settle_record(&mut self, name: &str, earned: u64, closed: bool) {
        self.leases
            .put_json(
                &lease_settle_path(name),
                &json!({"lease": name, "earned": earned, "closed": closed}),
            )
            .expect("put");
        self.leases.flush().expect("flush");
    }
}

#[test]
fn lease_escrows_pay_only_what_the_lease_earned_and_return_the_rest() {
    let mut w = world();
    w.run(
        TREASURER_KEY,
        "mint",
        json!({"to": key(ALICE), "amount": 100}),
    );
    w.run(TREASURER_KEY, "mint", json!({"to": key(BOB), "amount": 50}));
    let open = json!({"name": "lease-a1", "payee": key(BOB), "amount": 60, "lease": true});
    expect(w.run(ALICE, "escrow-open", open), "accepted");
    // Nobody releases a lease's credits by hand, not even the payer.
    expect(
        w.run(
            ALICE,
            "escrow-release",
            json!({"name": "lease-a1", "pay": 0}),
        ),
        "only the lease's record releases",
    );
    expect(
        w.run(
            TREASURER_KEY,
            "escrow-release",
            json!({"name": "lease-a1", "pay": 60}),
        ),
        "only the lease's record releases",
    );
    // Before the leases dapp claims it, settling moves nothing.
    let settle = json!({"names": ["lease-a1"]});
    expect(w.run(BOB, "escrow-settle", settle.clone()), "accepted");
    assert_eq!(w.balance(BOB), 50);
    // Any member tops up; only lease escrows take top-ups.
    expect(
        w.run(BOB, "escrow-add", json!({"name": "lease-a1", "amount": 10})),
        "accepted",
    );
    expect(
        w.run(BOB, "escrow-add", json!({"name": "lease-a1", "amount": 41})),
        "less than 41",
    );
    // The provider is paid what the lease earned, never more than was paid in.
    w.settle_record("lease-a1", 25, false);
    expect(w.run(BOB, "escrow-settle", settle.clone()), "accepted");
    assert_eq!(w.balance(BOB), 40 + 25);
    expect(w.run(BOB, "escrow-settle", settle.clone()), "accepted");
    assert_eq!(w.balance(BOB), 65, "settling twice pays once");
    w.settle_record("lease-a1", 1_000, false);
    expect(w.run(ALICE, "escrow-settle", settle.clone()), "accepted");
    assert_eq!(w.balance(BOB), 40 + 70, "capped at the 70 paid in");
    let e = escrow(&mut w.books, "lease-a1")
        .expect("read")
        .expect("open");
    assert_eq!((e.amount, e.paid_in, e.paid), (0, 70, 70));

    // Closed: the rest goes back to the payer, exactly, and the escrow ends.
    let open = json!({"name": "lease-b2", "payee": key(BOB), "amount": 30, "lease": true});
    expect(w.run(ALICE, "escrow-open", open), "accepted");
    w.settle_record("lease-b2", 7, true);
    expect(
        w.run(ALICE, "escrow-settle", json!({"names": ["lease-b2"]})),
        "accepted",
    );
    assert_eq!(w.balance(BOB), 117);
    assert_eq!(w.balance(ALICE), 100 - 60 - 30 + 23);
    assert!(escrow(&mut w.books, "lease-b2").expect("read").is_none());
    expect(
        w.run(
            ALICE,
            "escrow-add",
            json!({"name": "lease-b2", "amount": 1}),
        ),
        "no open escrow",
    );

    // An escrow no lease claimed goes back to its payer after UNCLAIMED.
    let open = json!({"name": "lease-c3", "payee": key(BOB), "amount": 5, "lease": true});
    expect(w.run(ALICE, "escrow-open", open), "accepted");
    let before = w.balance(ALICE);
    w.height += UNCLAIMED;
    expect(
        w.run(BOB, "escrow-settle", json!({"names": ["lease-c3"]})),
        "accepted",
    );
    assert_eq!(w.balance(ALICE), before + 5);

    // A plain escrow is not settled by a lease record, nor topped up.
    let open = json!({"name": "plain", "payee": key(BOB), "amount": 5});
    expect(w.run(ALICE, "escrow-open", open), "accepted");
    w.settle_record("plain", 5, true);
    expect(
        w.run(BOB, "escrow-settle", json!({"names": ["plain"]})),
        "is not a lease's",
    );
    expect(
        w.run(ALICE, "escrow-add", json!({"name": "plain", "amount": 1})),
        "is not a lease's",
    );
    // A damaged settle record fails the block rather than paying anyone.
    let open = json!({"name": "lease-d4", "payee": key(BOB), "amount": 5, "lease": true});
    expect(w.run(ALICE, "escrow-open", open), "accepted");
    w.leases
        .put(&lease_settle_path("lease-d4"), "{\"earned\": -1}")
        .expect("put");
    w.leases.flush().expect("flush");
    w.height += 1;
    let err = apply(
        &ctx(w.height),
        &Tx::new(&key(BOB), "escrow-settle", json!({"names": ["lease-d4"]})),
        &mut w.books,
        Chain {
            members: &mut w.members,
            leases: &mut w.leases,
        },
    )
    .expect_err("a damaged record is an error");
    assert!(err.to_string().contains("not a settle record"), "{err}");
}
