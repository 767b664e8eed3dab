use super::*;

use utter_accounting::Chain as Books;
use utter_dapp_sdk::test_key as key;

const ADA: u8 = 1;
const ALICE: u8 = 2;
const BOB: u8 = 3;
const PROV: u8 = 4;
const EVE: u8 = 5;
const T0: u64 = 1_000_000;
const IMAGE: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// Members (Ada the treasurer, Alice, Bob, a provider, Eve), books and
/// leases, each a state in a directory; every transaction is its own
/// block, so each dapp reads the other's as of the block before.
struct World {
    _dirs: Vec<tempfile::TempDir>,
    members: State,
    books: State,
    leases: State,
    height: u64,
}

fn ctx(dapp: &str, height: u64, time: u64) -> Context {
    Context {
        chain: "c".into(),
        dapp: dapp.into(),
        entry: "apply".into(),
        height,
        time,
        parent: "p".into(),
        proposer: "k".into(),
    }
}

fn world() -> World {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let mut members = State::at(dirs[0].path());
    let admin = key(ADA);
    let mut txs = vec![Tx::new(
        &admin,
        "add-member",
        json!({"key": admin, "name": "Ada", "roles": ["admin", "treasurer"],
               "salt": "00112233445566778899aabbccddeeff"}),
    )];
    for (n, name) in [(ALICE, "Alice"), (BOB, "Bob"), (PROV, "Prov"), (EVE, "Eve")] {
        txs.push(Tx::new(
            &admin,
            "add-member",
            json!({"key": key(n), "name": name}),
        ));
    }
    for t in txs {
        let out = utter_membership::apply(&t, &mut members).expect("apply");
        assert!(matches!(out, Outcome::Accepted(_)), "{out:?}");
        members.flush().expect("flush");
    }
    let books = State::at(dirs[1].path());
    let leases = State::at(dirs[2].path());
    let mut w = World {
        _dirs: dirs,
        members,
        books,
        leases,
        height: 0,
    };
    for n in [ALICE, BOB, EVE] {
        w.money(T0 - 100, ADA, "mint", json!({"to": key(n), "amount": 1000}));
    }
    w
}

fn text(out: Outcome) -> String {
    match out {
        Outcome::Accepted(v) => format!("accepted {}", v.unwrap_or(Value::Null)),
        Outcome::Rejected(r) => r,
    }
}

impl World {
    fn money(&mut self, time: u64, signer: u8, action: &str, args: Value) -> String {
        self.height += 1;
        let out = utter_accounting::apply(
            &ctx("accounting", self.height, time),
            &Tx::new(&key(signer), action, args),
            &mut self.books,
            Books {
                members: &mut self.members,
                leases: &mut self.leases,
            },
        )
        .expect("apply");
        self.books.flush().expect("flush");
        utter_accounting::test(&mut self.books).expect("the books balance");
        text(out)
    }

    fn lease(&mut self, time: u64, signer: u8, action: &str, args: Value) -> String {
        self.height += 1;
        let out = apply(
            &ctx("leases", self.height, time),
            &Tx::new(&key(signer), action, args),
            &mut self.leases,
            Chain {
                members: &mut self.members,
                accounts: &mut self.books,
            },
        )
        .expect("apply");
        self.leases.flush().expect("flush");
        test(time, &mut self.leases).expect("the leases' invariants hold");
        text(out)
    }

    fn offer(&mut self, name: &str, price: u64, grace: u64, capacity: u64) {
        let args = json!({"name": name, "millicpu": 500, "memory": 64 << 20, "pids": 32,
                          "disk": 1 << 30, "price": price, "grace": grace,
                          "images": ["any"], "location": "Ghent", "capacity": capacity});
        expect(self.lease(T0 - 50, PROV, "offer", args), "accepted");
    }

    /// Opens lease `id` on `offer` from `who` with `deposit` at `time`.
    fn open(&mut self, time: u64, who: u8, id: &str, offer: &str, deposit: u64) -> String {
        let got = self.money(
            time,
            who,
            "escrow-open",
            json!({"name": id, "payee": key(PROV), "amount": deposit, "lease": true}),
        );
        if !got.starts_with("accepted") {
            return got;
        }
        self.lease(
            time,
            who,
            "open",
            json!({"lease": id, "offer": offer, "image": IMAGE, "warn": 120}),
        )
    }

    fn beat(&mut self, time: u64, ids: &[&str]) -> String {
        self.lease(time, PROV, "heartbeat", json!({"leases": ids}))
    }

    fn settle(&mut self, time: u64, id: &str) {
        expect(
            self.money(time, PROV, "escrow-settle", json!({"names": [id]})),
            "accepted",
        );
    }

    fn get(&mut self, id: &str) -> Lease {
        lease(&mut self.leases, id).expect("read").expect("there")
    }

    fn balance(&mut self, n: u8) -> u64 {
        utter_accounting::balance(&mut self.books, &key(n)).expect("balance")
    }

    fn events(&mut self, id: &str) -> Vec<(u64, String)> {
        events(&mut self.leases, id)
            .expect("events")
            .into_iter()
            .map(|e| (e.time, e.event))
            .collect()
    }
}

fn expect(got: String, want: &str) {
    assert!(got.contains(want), "{got:?} (expected {want:?})");
}

#[test]
fn a_lease_drains_halts_resumes_on_anyones_top_up_and_is_destroyed_after_grace() {
    let mut w = world();
    // 6 credits a minute: 60 credits run 600 s.
    w.offer("small", 6, 600, 5);
    expect(w.open(T0, ALICE, "lease-a", "small", 60), "accepted");
    assert_eq!(
        provider_leases(&mut w.leases, &key(PROV)).expect("read"),
        ["lease-a"]
    );
    assert_eq!(w.get("lease-a").view(T0 + 500).status, Status::Pending);
    assert_eq!(
        w.get("lease-a").view(T0 + 500).balance,
        60,
        "not billed before it starts"
    );
    let start = T0 + 10;
    expect(w.beat(start, &["lease-a"]), "accepted");
    let l = w.get("lease-a");
    assert_eq!(l.view(start).runs_out_at, Some(start + 600));
    for t in (start + 30..start + 300).step_by(30) {
        expect(w.beat(t, &["lease-a"]), "accepted");
    }
    let v = w.get("lease-a").view(start + 300);
    assert_eq!((v.status, v.balance, v.used), (Status::Running, 30, 30));
    for t in (start + 300..start + 600).step_by(30) {
        expect(w.beat(t, &["lease-a"]), "accepted");
    }
    assert_eq!(w.get("lease-a").view(start + 580).status, Status::Low);
    // It halts at the exact second it runs out, whoever records it and when.
    let v = w.get("lease-a").view(start + 601);
    assert_eq!((v.status, v.balance), (Status::Halted, 0));
    assert_eq!(v.halted_since, Some(start + 600));
    assert_eq!(v.destroy_at, Some(start + 1200));
    expect(w.beat(start + 615, &["lease-a"]), "halted");
    let v = w.get("lease-a").view(start + 900);
    assert_eq!(
        (v.status, v.used, v.billed),
        (Status::Halted, 60, 600),
        "not billed halted"
    );

    // Bob (any key) tops it up during the grace period: it resumes then.
    expect(
        w.money(
            start + 700,
            BOB,
            "escrow-add",
            json!({"name": "lease-a", "amount": 30}),
        ),
        "accepted",
    );
    expect(
        w.lease(start + 701, BOB, "top-up", json!({"lease": "lease-a"})),
        "running",
    );
    assert_eq!(
        w.get("lease-a").view(start + 701).runs_out_at,
        Some(start + 1001)
    );
    for t in (start + 730..start + 1000).step_by(30) {
        expect(w.beat(t, &["lease-a"]), "accepted");
    }
    // It runs out again and nobody tops it up: destroyed after the grace.
    let v = w.get("lease-a").view(start + 1001 + 599);
    assert_eq!(v.status, Status::Halted);
    let v = w.get("lease-a").view(start + 1001 + 600);
    assert_eq!(
        (v.status, v.ended_at),
        (Status::Destroyed, Some(start + 1601))
    );
    expect(w.beat(start + 2000, &["lease-a"]), "destroyed");
    let events = w.events("lease-a");
    let names: Vec<&str> = events.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(
        names,
        [
            "opened",
            "started",
            "low",
            "halted",
            "top-up",
            "resumed",
            "low",
            "halted",
            "destroyed"
        ]
    );
    assert_eq!(events[3].0, start + 600);
    assert_eq!(events[7].0, start + 1001);
    assert_eq!(events[8].0, start + 1601);
    // A destroyed lease takes no top-up and frees its place.
    expect(
        w.lease(start + 2001, BOB, "top-up", json!({"lease": "lease-a"})),
        "has ended",
    );
    let o = offer(&mut w.leases, "small").expect("read").expect("there");
    assert!(o.open.is_empty());
    assert!(
        provider_leases(&mut w.leases, &key(PROV))
            .expect("read")
            .is_empty()
    );

    // The provider earned 90 (all paid in); nothing is left for Alice.
    let (alice, bob, prov) = (w.balance(ALICE), w.balance(BOB), w.balance(PROV));
    w.settle(start + 2002, "lease-a");
    assert_eq!(w.balance(PROV), prov + 90);
    assert_eq!((w.balance(ALICE), w.balance(BOB)), (alice, bob));
    let p = payer(&mut w.leases, &key(ALICE)).expect("read");
    assert_eq!((p.halts, p.destroyed, p.spent), (2, 1, 90));
}

#[test]
fn close_returns_exactly_what_was_not_used() {
    let mut w = world();
    w.offer("small", 10, 600, 5);
    expect(w.open(T0, ALICE, "lease-b", "small", 100), "accepted");
    expect(w.beat(T0 + 5, &["lease-b"]), "accepted");
    expect(w.beat(T0 + 35, &["lease-b"]), "accepted");
    expect(w.beat(T0 + 65, &["lease-b"]), "accepted");
    // Settled while it runs: the provider is paid what it earned so far.
    w.settle(T0 + 66, "lease-b");
    assert_eq!(w.balance(PROV), 10);
    expect(
        w.lease(T0 + 95, BOB, "close", json!({"lease": "lease-b"})),
        "only the key that opened",
    );
    expect(
        w.lease(T0 + 95, ALICE, "close", json!({"lease": "lease-b"})),
        "\"returned\":85",
    );
    w.settle(T0 + 96, "lease-b");
    // 90 s at 10 a minute: 15 to the provider, 85 back to Alice.
    assert_eq!(w.balance(PROV), 15);
    assert_eq!(w.balance(ALICE), 1000 - 15);
    assert!(escrow(&mut w.books, "lease-b").expect("read").is_none());
    expect(
        w.lease(T0 + 97, ALICE, "close", json!({"lease": "lease-b"})),
        "ended already",
    );
    // A lease the provider never started costs nothing.
    expect(w.open(T0 + 100, ALICE, "lease-c", "small", 50), "accepted");
    expect(
        w.lease(T0 + 400, ALICE, "close", json!({"lease": "lease-c"})),
        "\"returned\":50",
    );
    w.settle(T0 + 401, "lease-c");
    assert_eq!(w.balance(ALICE), 1000 - 15);
    assert_eq!(
        payer(&mut w.leases, &key(ALICE))
            .expect("read")
            .paid_through,
        2
    );
}

#[test]
fn time_without_heartbeats_is_not_billed_and_counts_against_the_provider() {
    let mut w = world();
    w.offer("small", 60, 600, 5);
    expect(w.open(T0, ALICE, "lease-d", "small", 1000), "accepted");
    expect(w.beat(T0, &["lease-d"]), "accepted");
    // Its node was down for 5 minutes: only the heartbeat window is billed.
    let v = w.get("lease-d").view(T0 + 300);
    assert_eq!((v.status, v.billed), (Status::Unheard, HEARTBEAT_WINDOW));
    expect(w.beat(T0 + 300, &["lease-d"]), "accepted");
    let l = w.get("lease-d");
    assert_eq!(
        (l.billed, l.unheard),
        (HEARTBEAT_WINDOW, 300 - HEARTBEAT_WINDOW)
    );
    let p = provider(&mut w.leases, &key(PROV)).expect("read");
    assert_eq!(p.uptime_permille(), Some(1000 * 90 / 300));
    // Heartbeats as fast as it likes bill no more than the time that passed.
    for _ in 0..20 {
        expect(w.beat(T0 + 310, &["lease-d"]), "accepted");
    }
    assert_eq!(w.get("lease-d").billed, HEARTBEAT_WINDOW + 10);
    // Nobody else sends its heartbeats; the provider takes no more than
    // the settle record says.
    expect(
        w.lease(T0 + 320, EVE, "heartbeat", json!({"leases": ["lease-d"]})),
        "another provider",
    );
    expect(
        w.money(
            T0 + 320,
            PROV,
            "escrow-release",
            json!({"name": "lease-d", "pay": 1000}),
        ),
        "only the lease's record releases",
    );
    w.settle(T0 + 321, "lease-d");
    assert_eq!(w.balance(PROV), 100, "100 s at 60 a minute");
}

#[test]
fn offers_and_keys_hold_only_so_many_leases() {
    let mut w = world();
    w.offer("two", 1, 600, 2);
    expect(w.open(T0, ALICE, "lease-1", "two", 10), "accepted");
    expect(w.open(T0, BOB, "lease-2", "two", 10), "accepted");
    expect(w.open(T0, EVE, "lease-3", "two", 10), "at capacity");
    w.settle(T0 + 700, "lease-3");
    assert_eq!(w.balance(EVE), 1000, "the unclaimed escrow went back");
    expect(
        w.lease(T0 + 1, BOB, "close", json!({"lease": "lease-2"})),
        "accepted",
    );
    expect(w.open(T0 + 2, EVE, "lease-4", "two", 10), "accepted");

    // A new key holds BASE_LEASES at once.
    w.offer("many", 1, 600, 100);
    for n in 0..BASE_LEASES - 1 {
        expect(
            w.open(T0 + 3, ALICE, &format!("lease-m{n}"), "many", 5),
            "accepted",
        );
    }
    expect(
        w.open(T0 + 3, ALICE, "lease-mx", "many", 5),
        "may hold 3 leases",
    );
    // Paying one through earns another.
    expect(
        w.lease(T0 + 4, ALICE, "close", json!({"lease": "lease-m0"})),
        "accepted",
    );
    expect(w.open(T0 + 5, ALICE, "lease-my", "many", 5), "accepted");
    expect(w.open(T0 + 5, ALICE, "lease-mz", "many", 5), "accepted");
    expect(
        w.open(T0 + 5, ALICE, "lease-mw", "many", 5),
        "may hold 4 leases",
    );
}

#[test]
fn open_checks_the_escrow_the_offer_and_the_image() {
    let mut w = world();
    w.offer("small", 6, 600, 5);
    w.offer("dear", 600, 600, 5);
    // An escrow to someone else, a plain one, an old one, too little.
    expect(
        w.money(
            T0,
            ALICE,
            "escrow-open",
            json!({"name": "lease-x", "payee": key(BOB), "amount": 10, "lease": true}),
        ),
        "accepted",
    );
    let open = |id: &str| json!({"lease": id, "offer": "small", "image": IMAGE});
    expect(
        w.lease(T0, ALICE, "open", open("lease-x")),
        "not a lease escrow from you",
    );
    expect(
        w.money(
            T0,
            ALICE,
            "escrow-open",
            json!({"name": "lease-y", "payee": key(PROV), "amount": 10}),
        ),
        "accepted",
    );
    expect(
        w.lease(T0, ALICE, "open", open("lease-y")),
        "not a lease escrow",
    );
    expect(
        w.lease(T0, BOB, "open", open("lease-x")),
        "not a lease escrow from you",
    );
    expect(
        w.lease(T0, ALICE, "open", open("lease-none")),
        "there is no escrow",
    );
    expect(
        w.lease(T0, ALICE, "open", open("nolease")),
        "must be the escrow's name",
    );
    expect(
        w.money(
            T0,
            ALICE,
            "escrow-open",
            json!({"name": "lease-z", "payee": key(PROV), "amount": 3, "lease": true}),
        ),
        "accepted",
    );
    expect(
        w.lease(
            T0,
            ALICE,
            "open",
            json!({"lease": "lease-z", "offer": "dear", "image": IMAGE}),
        ),
        "less than one second",
    );
    expect(w.lease(T0, ALICE, "open", open("lease-z")), "accepted");
    expect(
        w.money(
            T0,
            ALICE,
            "escrow-open",
            json!({"name": "lease-old", "payee": key(PROV), "amount": 30, "lease": true}),
        ),
        "accepted",
    );
    expect(
        w.lease(T0 + CLAIM_WINDOW, ALICE, "open", open("lease-old")),
        "more than 300 s ago",
    );
    expect(
        w.lease(T0 + 1, ALICE, "open", open("lease-old")),
        "accepted",
    );
    expect(
        w.lease(T0 + 1, ALICE, "open", open("lease-old")),
        "exists already",
    );
    // Only the images it allows; not once withdrawn.
    let args = json!({"name": "pinned", "millicpu": 500, "memory": 64 << 20, "pids": 32,
                      "disk": 0, "price": 1, "grace": 60, "images": [IMAGE],
                      "location": "", "capacity": 5});
    expect(w.lease(T0, PROV, "offer", args), "accepted");
    expect(
        w.money(
            T0,
            ALICE,
            "escrow-open",
            json!({"name": "lease-p", "payee": key(PROV), "amount": 30, "lease": true}),
        ),
        "accepted",
    );
    let other = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
    expect(
        w.lease(
            T0,
            ALICE,
            "open",
            json!({"lease": "lease-p", "offer": "pinned", "image": other}),
        ),
        "does not run image",
    );
    expect(
        w.lease(T0, EVE, "withdraw", json!({"name": "pinned"})),
        "only its provider",
    );
    expect(
        w.lease(T0, PROV, "withdraw", json!({"name": "pinned"})),
        "accepted",
    );
    expect(
        w.lease(
            T0,
            ALICE,
            "open",
            json!({"lease": "lease-p", "offer": "pinned", "image": IMAGE}),
        ),
        "withdrawn",
    );
    // Bad offers.
    let bad = json!({"name": "bad", "millicpu": 500, "memory": 1, "pids": 32, "disk": 0,
                     "price": 1, "grace": 60, "images": ["any"], "location": "", "capacity": 5});
    expect(
        w.lease(T0, PROV, "offer", bad),
        "args.memory must be between",
    );
    let bad = json!({"name": "small", "millicpu": 500, "memory": 64 << 20, "pids": 32,
                     "disk": 0, "price": 1, "grace": 60, "images": ["latest"],
                     "location": "", "capacity": 5});
    expect(w.lease(T0, PROV, "offer", bad), "image digests");
    expect(w.lease(T0, PROV, "dance", json!({})), "unknown action");
}

#[test]
fn a_changed_offer_never_alters_an_open_lease() {
    let mut w = world();
    w.offer("small", 6, 600, 5);
    expect(w.open(T0, ALICE, "lease-e", "small", 60), "accepted");
    w.offer("small", 600, 0, 5);
    let l = w.get("lease-e");
    assert_eq!((l.terms.price, l.terms.grace), (6, 600));
    let o = offer(&mut w.leases, "small").expect("read").expect("there");
    assert_eq!(
        o.open,
        vec!["lease-e".to_string()],
        "its leases stay listed"
    );
    expect(
        w.lease(
            T0,
            EVE,
            "offer",
            json!({"name": "small", "millicpu": 500, "memory": 64 << 20,
            "pids": 32, "disk": 0, "price": 1, "grace": 60, "images": ["any"],
            "location": "", "capacity": 5}),
        ),
        "belongs to another provider",
    );
}

#[test]
fn the_view_at_any_time_is_what_recording_then_would_give() {
    // However the checkpoints fall, the balance at t is the same.
    let mut l = Lease {
        id: "lease-v".into(),
        offer: "o".into(),
        provider: key(PROV),
        owner: key(ALICE),
        image: IMAGE.into(),
        terms: Terms {
            millicpu: 100,
            memory: 16 << 20,
            pids: 8,
            disk: 0,
            price: 7,
            grace: 100,
            ports: Vec::new(),
        },
        warn: 60,
        opened: T0,
        deposits: 50,
        billed: 0,
        at: T0,
        heard: Some(T0),
        phase: Phase::Running,
        unheard: 0,
        warned: false,
        endpoints: Vec::new(),
    };
    // Heartbeats that go on: the record as of T0 with a heartbeat far ahead.
    let ahead = Lease {
        heard: Some(T0 + 10_000),
        ..l.clone()
    };
    let views: Vec<View> = (0..700).map(|s| ahead.view(T0 + s)).collect();
    let mut events = Vec::new();
    for s in (0..700).step_by(13) {
        l.heard = Some(T0 + s);
        l.checkpoint(T0 + s, &mut events);
        let v = l.view(T0 + s);
        assert_eq!(v.used, views[s as usize].used, "at +{s}");
        assert_eq!(v.status, views[s as usize].status, "at +{s}");
        assert!(v.used <= l.deposits);
    }
    // 50 credits at 7 a minute run 428 s; then 100 s of grace.
    assert_eq!(views[427].status, Status::Low);
    assert_eq!(views[428].status, Status::Halted);
    assert_eq!(views[528].status, Status::Destroyed);
    assert_eq!(
        l.phase,
        Phase::Ended {
            at: T0 + 528,
            how: End::Destroyed
        }
    );
    assert_eq!(
        events.iter().find(|e| e.event == "halted").map(|e| e.time),
        Some(T0 + 428)
    );
}

#[test]
fn the_provider_says_where_a_lease_s_ports_are_and_only_for_its_leases() {
    let mut w = world();
    let args = json!({"name": "web", "millicpu": 500, "memory": 64 << 20, "pids": 32,
                      "disk": 1 << 30, "price": 6, "grace": 600, "images": ["any"],
                      "location": "Ghent", "capacity": 2, "ports": [8080, 8443]});
    expect(w.lease(T0 - 50, PROV, "offer", args), "accepted");
    expect(w.open(T0, ALICE, "lease-w", "web", 60), "accepted");
    assert_eq!(w.get("lease-w").terms.ports, [8080, 8443]);
    let beat = |ports: Value| json!({"leases": ["lease-w"], "ports": ports});
    for (ports, why) in [
        (json!({"lease-w": ["127.0.0.1:4000"]}), "names 1 addresses"),
        (
            json!({"lease-w": ["localhost:4000", "x"]}),
            "addresses host:port",
        ),
        (
            json!({"lease-x": ["127.0.0.1:1", "127.0.0.1:2"]}),
            "which args.leases",
        ),
        (json!(["127.0.0.1:1"]), "must be an object"),
    ] {
        expect(w.lease(T0 + 1, PROV, "heartbeat", beat(ports)), why);
    }
    assert!(w.get("lease-w").endpoints.is_empty());
    let at = json!({"lease-w": ["192.0.2.7:4000", "[2001:db8::1]:4001"]});
    // Only the lease's provider says where it is.
    expect(
        w.lease(T0 + 1, EVE, "heartbeat", beat(at.clone())),
        "another provider",
    );
    expect(w.lease(T0 + 1, PROV, "heartbeat", beat(at)), "accepted");
    assert_eq!(
        w.get("lease-w").endpoints,
        ["192.0.2.7:4000", "[2001:db8::1]:4001"]
    );
    // A heartbeat without ports keeps them.
    expect(w.beat(T0 + 30, &["lease-w"]), "accepted");
    assert_eq!(w.get("lease-w").endpoints.len(), 2);
}
