//! Durability: what committed survives every node restarting.

use super::*;

#[test]
fn committed_entries_survive_every_node_restarting() {
    let mut cluster = TestCluster::new(3, config(), 12);
    let leader = cluster.elect();
    for index in 0..5 {
        cluster
            .group(leader)
            .propose(command(&format!("c{index}")))
            .unwrap();
    }
    cluster.settle();
    let ids: Vec<NodeId> = cluster.groups.keys().copied().collect();
    for id in &ids {
        cluster.crash(*id);
    }
    for id in &ids {
        cluster.restart(*id, 12);
    }
    let leader = cluster.elect();
    cluster.group(leader).propose(command("after")).unwrap();
    cluster.tick_all(3);
    for id in &ids {
        assert_eq!(cluster.commands(*id).len(), 6, "{id}");
    }
}
