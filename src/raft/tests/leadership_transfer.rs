//! Leadership transfer: leadership moves to the chosen voter.

use super::*;

#[test]
fn leadership_moves_to_the_chosen_voter() {
    let mut cluster = TestCluster::new(3, config(), 16);
    let leader = cluster.elect();
    cluster.tick_all(2);
    let target = cluster
        .groups
        .keys()
        .copied()
        .find(|id| *id != leader)
        .unwrap();
    cluster.group(leader).transfer_leadership(target).unwrap();
    assert_eq!(
        cluster.group(leader).propose(command("refused")),
        Err(ProposeError::TransferInProgress)
    );
    cluster.settle();
    assert_eq!(cluster.leader(), Some(target));
    assert_eq!(cluster.groups[&leader].leader(), Some(target));
}
