//! Record encoding tests: every record round-trips (proptest), the optional fields sit where
//! the format puts them, and junk of any kind decodes to an error, never a panic.

use proptest::prelude::*;

use super::*;

fn meta_strategy() -> impl Strategy<Value = MessageMeta> {
    (
        ".{0,40}",
        any::<(bool, bool, bool)>(),
        any::<(u64, u64, u64, u32, u64)>(),
        proptest::option::of(any::<u64>()),
        any::<(u32, u32)>(),
        (0..4u8, proptest::option::of(any::<u64>())),
        proptest::collection::vec(any::<(u64, u64, u32)>(), 0..=INLINE_EXTENTS),
        proptest::option::of((0..4u8, ".{0,20}", proptest::option::of(".{0,40}"))),
    )
        .prop_map(
            |(sender, flags, nums, failed_at, counts, (p, coalesce), ext, one)| {
                let (recipients, chunks) = counts;
                let extents: Vec<Extent> = ext
                    .into_iter()
                    .map(|(file, offset, len)| Extent {
                        file,
                        offset,
                        len,
                        framed: true,
                    })
                    .collect();
                // Inline extents are the body's pieces: as many as `chunks` says.
                let chunks = match u32::try_from(extents.len()) {
                    Ok(0) | Err(_) => chunks,
                    Ok(n) => n,
                };
                // An inline recipient is the only one.
                let rcpt = one.map(|(state, address, last_reply)| RcptRecord {
                    address,
                    state: state_of(state).unwrap(),
                    last_reply,
                });
                let recipients = if rcpt.is_some() { 1 } else { recipients };
                MessageMeta {
                    sender,
                    eight_bit: flags.0,
                    smtputf8: flags.1,
                    held: flags.2,
                    received_unix: nums.0,
                    size: nums.1,
                    enqueued_at: nums.2,
                    attempts: nums.3,
                    next_attempt: nums.4,
                    failed_at,
                    recipients,
                    chunks,
                    priority: priority_of(p).unwrap(),
                    coalesce,
                    extents,
                    rcpt,
                }
            },
        )
}

/// A plain committed message: normal priority, no coalescing key.
fn plain_meta() -> MessageMeta {
    MessageMeta {
        sender: "ups@site".into(),
        eight_bit: false,
        smtputf8: false,
        received_unix: 1,
        size: 2,
        enqueued_at: 3,
        attempts: 0,
        next_attempt: 3,
        held: false,
        failed_at: None,
        recipients: 1,
        chunks: 1,
        priority: Priority::Normal,
        coalesce: None,
        extents: Vec::new(),
        rcpt: None,
    }
}

#[test]
fn an_inline_recipient_follows_the_extents_and_needs_exactly_one_recipient() {
    let rcpt = RcptRecord {
        address: "ops@example.test".into(),
        state: RcptState::Deferred,
        last_reply: Some("451 4.3.0 later".into()),
    };
    let meta = MessageMeta {
        extents: vec![Extent {
            file: 1,
            offset: 0,
            len: 9,
            framed: false,
        }],
        rcpt: Some(rcpt.clone()),
        ..plain_meta()
    };
    let bytes = meta.encode();
    assert_eq!(bytes[1] & FLAG_RCPT, FLAG_RCPT);
    let record = encode_rcpt(&rcpt);
    assert!(bytes.ends_with(&record));
    let len = &bytes[bytes.len() - record.len() - 4..bytes.len() - record.len()];
    assert_eq!(len, &u32::try_from(record.len()).unwrap().to_be_bytes());
    assert_eq!(MessageMeta::decode(&bytes).unwrap(), meta);
    assert!(MessageMeta::decode(&bytes[..bytes.len() - 1]).is_err());
    let two = MessageMeta {
        recipients: 2,
        ..meta
    };
    assert!(MessageMeta::decode(&two.encode()).is_err());
    assert_eq!(plain_meta().encode()[1] & FLAG_RCPT, 0);
}

#[test]
fn inline_extents_follow_the_coalescing_key_and_records_without_them_have_none() {
    let plain = plain_meta().encode();
    assert_eq!(plain[1] & FLAG_EXTENTS, 0);
    let extent = Extent {
        file: 7,
        offset: 4096,
        len: 1150,
        framed: true,
    };
    let meta = MessageMeta {
        coalesce: Some(0xfeed),
        extents: vec![extent],
        ..plain_meta()
    };
    let with = meta.encode();
    assert_eq!(with[1] & FLAG_EXTENTS, FLAG_EXTENTS);
    assert_eq!(&with[with.len() - EXTENT_BYTES..], &extent.encode());
    assert_eq!(
        &with[with.len() - EXTENT_BYTES - 8..with.len() - EXTENT_BYTES],
        &0xfeed_u64.to_be_bytes()
    );
    assert_eq!(MessageMeta::decode(&with).unwrap(), meta);
    // Cut short, or claiming more pieces than it carries: an error, never a panic.
    assert!(MessageMeta::decode(&with[..with.len() - 1]).is_err());
    let two = MessageMeta {
        chunks: 2,
        ..meta.clone()
    };
    let mut lying = two.encode();
    lying.truncate(lying.len() - EXTENT_BYTES);
    assert!(MessageMeta::decode(&lying).is_err());
    let empty = MessageMeta { chunks: 0, ..meta };
    assert!(MessageMeta::decode(&empty.encode()).is_err());
}

#[test]
fn normal_priority_is_encoded_with_no_flag_and_no_byte() {
    let meta = plain_meta();
    let normal = meta.encode();
    assert_eq!(normal[1] & FLAG_PRIORITY, 0);
    let urgent = MessageMeta {
        priority: Priority::Urgent,
        ..meta.clone()
    }
    .encode();
    assert_eq!(urgent.len(), normal.len() + 1);
    assert_eq!(
        MessageMeta::decode(&urgent).unwrap().priority,
        Priority::Urgent
    );
    let mut unknown = urgent.clone();
    *unknown.last_mut().unwrap() = 9;
    assert!(MessageMeta::decode(&unknown).is_err());
}

#[test]
fn a_coalescing_key_is_eight_bytes_after_the_priority_and_absent_without_one() {
    let meta = MessageMeta {
        priority: Priority::High,
        ..plain_meta()
    };
    let plain = meta.encode();
    assert_eq!(plain[1] & FLAG_COALESCE, 0);
    let keyed = MessageMeta {
        coalesce: Some(0x0102_0304_0506_0708),
        ..meta.clone()
    }
    .encode();
    assert_eq!(keyed.len(), plain.len() + 8);
    assert_eq!(&keyed[keyed.len() - 9..], &[1, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(
        MessageMeta::decode(&keyed).unwrap().coalesce,
        Some(0x0102_0304_0506_0708)
    );
    // The flag without the bytes is a short record, not a silent `None`.
    let mut cut = keyed.clone();
    cut.truncate(keyed.len() - 8);
    assert!(MessageMeta::decode(&cut).is_err());
}

fn state_strategy() -> impl Strategy<Value = RcptState> {
    (0..4u8).prop_map(|s| state_of(s).unwrap())
}

fn rcpt_strategy() -> impl Strategy<Value = RcptRecord> {
    (".{0,40}", state_strategy(), proptest::option::of(".{0,60}")).prop_map(
        |(address, state, last_reply)| RcptRecord {
            address,
            state,
            last_reply,
        },
    )
}

fn attempt_strategy() -> impl Strategy<Value = AttemptRecord> {
    (
        any::<u64>(),
        proptest::collection::vec((any::<u32>(), state_strategy(), ".{0,60}"), 0..5),
    )
        .prop_map(|(at_unix, results)| AttemptRecord { at_unix, results })
}

proptest! {
    #[test]
    fn meta_round_trips(meta in meta_strategy()) {
        prop_assert_eq!(MessageMeta::decode(&meta.encode()), Ok(meta));
    }

    #[test]
    fn rcpt_round_trips(rcpt in rcpt_strategy()) {
        prop_assert_eq!(decode_rcpt(&encode_rcpt(&rcpt)), Ok(rcpt));
    }

    #[test]
    fn attempt_round_trips(attempt in attempt_strategy(), cut in 0usize..400) {
        let bytes = encode_attempt(&attempt);
        prop_assert!(decode_attempt(&bytes[..cut % bytes.len()]).is_err());
        prop_assert_eq!(decode_attempt(&bytes), Ok(attempt));
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        let _ = MessageMeta::decode(&bytes);
        let _ = decode_rcpt(&bytes);
        let _ = decode_attempt(&bytes);
        let _ = decode_usage(&bytes);
        let _ = decode_clock(&bytes);
    }

    #[test]
    fn every_truncation_is_an_error(meta in meta_strategy(), cut in 0usize..200) {
        let bytes = meta.encode();
        let cut = cut % bytes.len();
        prop_assert!(MessageMeta::decode(&bytes[..cut]).is_err());
    }
}

#[test]
fn unknown_version_is_rejected() {
    let mut bytes = encode_usage(Usage {
        messages: 1,
        bytes: 2,
    });
    assert_eq!(
        decode_usage(&bytes),
        Ok(Usage {
            messages: 1,
            bytes: 2
        })
    );
    bytes[0] = 9;
    assert_eq!(
        decode_usage(&bytes),
        Err(DecodeError("unknown record version"))
    );
}

#[test]
fn clock_round_trips() {
    assert_eq!(decode_clock(&encode_clock(123_456)), Ok(123_456));
    assert!(decode_clock(&[1, 2, 3]).is_err());
}
