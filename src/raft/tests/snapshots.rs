//! Snapshots: an image the state machine would not take is refused and asked for again.

use super::*;

/// A snapshot whose image the state machine would not take is refused when its last chunk
/// arrives: nothing is installed, and a later transfer from offset 0 is taken.
#[test]
fn an_invalid_snapshot_image_is_refused_and_asked_for_again() {
    fn only_ok(data: &[u8]) -> Result<(), String> {
        if data == b"ok" {
            Ok(())
        } else {
            Err("not ok".to_string())
        }
    }
    let checked = RaftConfig {
        snapshot_check: Some(only_ok),
        ..config()
    };
    let mut follower = RaftGroup::joining(node(3), checked, SeededRng::from_seed(3));
    let chunk = |data: &[u8]| Message {
        from: node(1),
        to: node(3),
        term: 2,
        body: MessageBody::InstallSnapshot {
            meta: SnapshotMeta {
                index: 7,
                term: 2,
                configuration: Configuration::with_voters([node(1), node(2), node(3)]),
            },
            offset: 0,
            data: data.to_vec(),
            done: true,
        },
    };
    assert!(!follower.step(chunk(b"garbage")));
    let ready = follower.ready();
    assert!(ready.snapshot.is_none(), "nothing installed");
    follower.advance();
    assert_eq!(follower.log().snapshot_index(), 0);
    assert!(follower.step(chunk(b"ok")));
    let ready = follower.ready();
    assert_eq!(ready.snapshot.map(|snapshot| snapshot.meta.index), Some(7));
}
