//! The maildrop's trust decisions and envelope checks, as pure functions.

use super::*;

fn facts() -> FileFacts {
    FileFacts {
        regular: true,
        uid: 1000,
        mode: 0o100644,
        nlink: 1,
        size: 100,
    }
}

#[test]
fn only_files_written_as_sendmail_writes_them_are_trusted() {
    assert_eq!(vet(facts(), 1000, 1000), Ok(()));
    let root = FileFacts { uid: 0, ..facts() };
    assert_eq!(vet(root, 1000, 1000), Ok(()));
    let foreign = FileFacts {
        uid: 1001,
        ..facts()
    };
    assert!(vet(foreign, 1000, 1000).unwrap_err().contains("uid 1001"));
    let writable = FileFacts {
        mode: 0o100666,
        ..facts()
    };
    assert!(vet(writable, 1000, 1000).unwrap_err().contains("0666"));
    let group = FileFacts {
        mode: 0o100664,
        ..facts()
    };
    assert!(vet(group, 1000, 1000).is_err());
    let fifo = FileFacts {
        regular: false,
        ..facts()
    };
    assert!(vet(fifo, 1000, 1000).is_err());
    let linked = FileFacts {
        nlink: 2,
        ..facts()
    };
    assert!(vet(linked, 1000, 1000).unwrap_err().contains("hard links"));
    let big = FileFacts {
        size: 1001,
        ..facts()
    };
    assert!(vet(big, 1000, 1000).is_err());
}

#[test]
fn the_daemon_trusts_its_own_user_and_root_only() {
    assert!(owner_trusted(0, 998));
    assert!(owner_trusted(998, 998));
    assert!(!owner_trusted(1000, 998));
}

fn envelope(text: &str) -> Result<(String, Vec<String>), String> {
    let mut reader = text.as_bytes();
    read_envelope(&mut reader, 10).map_err(|e| match e {
        PickupError::Bad(reason) => reason,
        _ => "other".into(),
    })
}

#[test]
fn envelope_addresses_are_checked_as_smtp_checks_them() {
    let ok = envelope(&format!("{MAGIC}\nfrom a@b.test\nto c@d.test\n\n")).unwrap();
    assert_eq!(ok, ("a@b.test".into(), vec!["c@d.test".to_owned()]));
    assert!(envelope(&format!("{MAGIC}\nfrom \nto c@d.test\n\n")).is_ok());
    for bad in ["to \n", "to a b\n", "to <x@y>\n", "to x@\n"] {
        let err = envelope(&format!("{MAGIC}\nfrom a@b.test\n{bad}\n")).unwrap_err();
        assert!(err.contains("not an address"), "{bad:?}: {err}");
    }
    let err = envelope(&format!("{MAGIC}\nfrom a b\nto c@d.test\n\n")).unwrap_err();
    assert!(err.contains("sender"), "{err}");
}

#[test]
fn an_unusable_file_is_reported_once_and_set_aside_after_the_wait() {
    let mut waiting = Waiting::default();
    let path = Path::new("maildrop/1.msg");
    let start = Instant::now();
    assert_eq!(waiting.note(path, "a FIFO", start), Seen::First);
    assert_eq!(
        waiting.note(path, "a FIFO", start + Duration::from_secs(5)),
        Seen::Again
    );
    let report = waiting.report();
    assert_eq!(report, [("1.msg".to_owned(), "a FIFO".to_owned())]);
    let late = start + SET_ASIDE_AFTER;
    assert_eq!(waiting.note(path, "a FIFO", late), Seen::Due);
}
