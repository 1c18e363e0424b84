//! The placement driver's pure parts.

use super::*;
use crate::directory::{ClusterName, ClusterSettings, DirectoryOutcome, Member};

fn directory_of_members(members: &[(u32, &str)]) -> Directory {
    let mut directory = Directory::default();
    let cluster = ClusterName::new("test").unwrap();
    let mut members = members.iter().map(|(id, zone)| Member::for_test(*id, zone));
    directory.apply(&DirectoryOperation::Bootstrap {
        settings: ClusterSettings::new(cluster.clone()),
        first: members.next().unwrap(),
    });
    for member in members {
        directory.apply(&DirectoryOperation::Join {
            cluster_name: cluster.clone(),
            member,
        });
    }
    directory
}

#[test]
fn a_leaving_member_is_drained_once_nothing_holds_it() {
    let mut directory = directory_of_members(&[(1, "a"), (2, "b"), (3, "c"), (4, "a")]);
    let name = PartitionName::new("p").unwrap();
    let DirectoryOutcome::Partition { entry, .. } = directory
        .apply(&DirectoryOperation::CreatePartition { name: name.clone() })
        .0
    else {
        panic!("not created");
    };
    let holder = entry.replicas[0];
    directory.apply(&DirectoryOperation::SetMemberState {
        id: holder,
        state: MemberState::Leaving,
    });
    assert!(drained_members(&directory).is_empty(), "it still holds p");
    let target = directory.ring_replicas(&name);
    assert!(!target.contains(&holder));
    directory.apply(&DirectoryOperation::MovePartition {
        name: name.clone(),
        generation: 1,
        replicas: target,
    });
    assert!(
        drained_members(&directory).is_empty(),
        "p is still moving off it"
    );
    directory.apply(&DirectoryOperation::FinishMove {
        name: name.clone(),
        generation: 2,
    });
    assert_eq!(drained_members(&directory), vec![holder]);
}
