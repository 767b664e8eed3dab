use super::*;

use utter_leases::{End, Phase, Terms};

const T0: u64 = 1_000_000;

fn lease(id: &str, phase: Phase, deposits: u64) -> Lease {
    Lease {
        id: id.into(),
        offer: "o".into(),
        provider: "ssh-ed25519 AAAAprovider".into(),
        owner: "ssh-ed25519 AAAAowner".into(),
        image: "sha256:00".into(),
        terms: Terms {
            millicpu: 100,
            memory: 16 << 20,
            pids: 8,
            disk: 0,
            price: 60,
            grace: 100,
            ports: Vec::new(),
        },
        warn: 10,
        opened: T0,
        deposits,
        billed: 0,
        at: T0,
        heard: Some(T0),
        phase,
        unheard: 0,
        warned: false,
        endpoints: Vec::new(),
    }
}

fn leases(ls: Vec<Lease>) -> BTreeMap<String, Lease> {
    ls.into_iter().map(|l| (l.id.clone(), l)).collect()
}

fn have(hs: &[(&str, Have)]) -> BTreeMap<String, Have> {
    hs.iter().map(|(n, h)| (n.to_string(), *h)).collect()
}

#[test]
fn each_container_follows_its_lease() {
    // 60 credits a minute, 30 credits: 30 s of running.
    let ls = leases(vec![
        lease("lease-new", Phase::Pending, 30),
        lease("lease-run", Phase::Running, 30),
        lease("lease-halted", Phase::Halted { since: T0 }, 30),
        lease(
            "lease-closed",
            Phase::Ended {
                at: T0,
                how: End::Closed,
            },
            30,
        ),
    ]);
    let got = have(&[
        ("lease-run", Have::Running),
        ("lease-halted", Have::Running),
        ("lease-closed", Have::Frozen),
        ("lease-stray", Have::Running),
    ]);
    let p = plan(T0 + 5, &ls, &got);
    assert_eq!(
        p.steps,
        vec![
            Step::Remove("lease-closed".into()),
            Step::Freeze("lease-halted".into()),
            Step::Start("lease-new".into()),
            Step::Remove("lease-stray".into()),
        ]
    );
    // It wakes for the second lease-run runs dry.
    assert_eq!(p.wake_at, Some(T0 + 30));
    // At that second, it freezes it.
    let p = plan(T0 + 30, &ls, &got);
    assert!(p.steps.contains(&Step::Freeze("lease-run".into())), "{p:?}");
    // A frozen one whose lease resumed is thawed; one already where its
    // lease is is left alone; a halted one is removed after grace.
    let ls2 = leases(vec![lease("lease-run", Phase::Running, 30)]);
    let p = plan(T0 + 1, &ls2, &have(&[("lease-run", Have::Frozen)]));
    assert_eq!(p.steps, vec![Step::Thaw("lease-run".into())]);
    let p = plan(T0 + 1, &ls2, &have(&[("lease-run", Have::Running)]));
    assert!(p.steps.is_empty());
    let p = plan(T0 + 100, &ls, &got);
    assert!(
        p.steps.contains(&Step::Remove("lease-halted".into())),
        "{p:?}"
    );
}

#[test]
fn a_restart_adopts_containers_rather_than_starting_them_twice() {
    let ls = leases(vec![lease("lease-a", Phase::Running, 6000)]);
    // What the node before left running is kept as is.
    let p = plan(T0 + 10, &ls, &have(&[("lease-a", Have::Running)]));
    assert!(p.steps.is_empty(), "{p:?}");
    // A container whose program ended is not started again by the agent.
    let p = plan(T0 + 10, &ls, &have(&[("lease-a", Have::Exited)]));
    assert!(p.steps.is_empty(), "{p:?}");
}
