//! Model test: random operations on the store match a `BTreeMap`, also across reopen.

use super::*;

/// One step of the model test.
#[derive(Clone, Debug)]
enum Op {
    Commit {
        body: Vec<Vec<u8>>,
        recipients: usize,
        now: u64,
    },
    Abort,
    Record {
        pick: usize,
        results: Vec<(usize, u8)>,
        next: u64,
    },
    Delete {
        pick: usize,
    },
    Hold {
        pick: usize,
        held: bool,
    },
    Reopen,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let chunk = proptest::collection::vec(any::<u8>(), 0..40);
    prop_oneof![
        4 => (proptest::collection::vec(chunk, 0..3), 1..4usize, 0..100u64)
            .prop_map(|(body, recipients, now)| Op::Commit { body, recipients, now }),
        1 => Just(Op::Abort),
        4 => (any::<usize>(), proptest::collection::vec((0..4usize, 0..4u8), 0..4), 0..200u64)
            .prop_map(|(pick, results, next)| Op::Record { pick, results, next }),
        1 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, held)| Op::Hold { pick, held }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Clone, Debug)]
struct Model {
    body: Vec<u8>,
    states: Vec<RcptState>,
    next_attempt: u64,
    held: bool,
}

fn state(n: u8) -> RcptState {
    match n {
        0 => RcptState::Pending,
        1 => RcptState::Deferred,
        2 => RcptState::Delivered,
        _ => RcptState::Failed,
    }
}

fn pick(model: &BTreeMap<QueueId, Model>, n: usize) -> Option<QueueId> {
    (!model.is_empty()).then(|| *model.keys().nth(n % model.len()).unwrap_or(&QueueId(0)))
}

/// Applies `op` to store and model; `Reopen` is done by the caller (the old handle must go first).
fn apply(store: &Store, model: &mut BTreeMap<QueueId, Model>, op: Op) {
    match op {
        Op::Commit {
            body,
            recipients,
            now,
        } => {
            let addresses: Vec<String> = (0..recipients).map(|n| format!("r{n}@x")).collect();
            let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
            let chunks: Vec<&[u8]> = body.iter().map(Vec::as_slice).collect();
            let id = commit(store, &chunks, &refs, now);
            let states = vec![RcptState::Pending; recipients];
            model.insert(
                id,
                Model {
                    body: body.concat(),
                    states,
                    next_attempt: now,
                    held: false,
                },
            );
        }
        Op::Abort => {
            let mut spool = store.spool().unwrap();
            spool.append(b"aborted").unwrap();
            spool.abort();
        }
        Op::Record {
            pick: n,
            results,
            next,
        } => {
            let Some(id) = pick(model, n) else { return };
            let results: Vec<_> = results.iter().map(|&(i, s)| (i, state(s), None)).collect();
            block_on(store.record(id, &results, AT, 1, next)).unwrap();
            let entry = model.get_mut(&id).unwrap();
            for (i, s, _) in &results {
                if let Some(slot) = entry.states.get_mut(*i) {
                    *slot = *s;
                }
            }
            entry.next_attempt = next;
            let open = entry
                .states
                .iter()
                .any(|s| matches!(s, RcptState::Pending | RcptState::Deferred));
            if !open && !entry.states.contains(&RcptState::Failed) {
                model.remove(&id);
            }
        }
        Op::Delete { pick: n } => {
            let Some(id) = pick(model, n) else { return };
            block_on(store.delete(id)).unwrap();
            model.remove(&id);
        }
        Op::Hold { pick: n, held } => {
            let Some(id) = pick(model, n) else { return };
            if held {
                block_on(store.hold(id)).unwrap();
            } else {
                block_on(store.release(id)).unwrap();
            }
            model.get_mut(&id).unwrap().held = held;
        }
        Op::Reopen => {}
    }
}

fn check(store: &Store, model: &BTreeMap<QueueId, Model>) {
    let listed = store.list().unwrap();
    assert_eq!(ids(&listed), model.keys().copied().collect::<Vec<_>>());
    for message in &listed {
        let expected = &model[&message.id];
        let states: Vec<_> = message.recipients.iter().map(|r| r.state).collect();
        assert_eq!(states, expected.states);
        assert_eq!(message.held, expected.held);
        assert_eq!(message.next_attempt, expected.next_attempt);
        assert_eq!(body_of(store, message.id), expected.body);
    }
    let bytes = model.values().map(|m| m.body.len() as u64).sum();
    assert_eq!(
        store.usage(),
        Usage {
            messages: model.len() as u64,
            bytes
        }
    );
    let mut due: Vec<_> = model
        .iter()
        .filter(|(_, m)| {
            !m.held
                && m.states
                    .iter()
                    .any(|s| matches!(s, RcptState::Pending | RcptState::Deferred))
        })
        .map(|(id, m)| (m.next_attempt, *id))
        .collect();
    due.sort();
    let got: Vec<_> = store
        .due(u64::MAX, 1000)
        .unwrap()
        .iter()
        .map(|m| (m.next_attempt, m.id))
        .collect();
    assert_eq!(got, due);
    assert_eq!(store.next_due(), due.first().map(|d| d.0));
    assert_eq!(keys_with_prefix(store, key::SPOOL), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_a_btreemap_model(ops in proptest::collection::vec(op_strategy(), 1..24)) {
        let dir = TempDir::new().unwrap();
        let (mut store, _) = open(&dir);
        let mut model = BTreeMap::new();
        for op in ops {
            if matches!(op, Op::Reopen) {
                drop(store);
                let report;
                (store, report) = open(&dir);
                prop_assert_eq!(report.messages, model.len() as u64);
                prop_assert_eq!(report.swept_spools + report.quarantined, 0);
            }
            apply(&store, &mut model, op);
            check(&store, &model);
        }
    }
}
