//! Randomized safety: random loss, reordering, partitions and crashes keep election and state
//! machine safety, and the cluster converges after healing.

use super::*;

/// Many seeds of random loss, reordering, partitions and crashes with proposals throughout:
/// election safety and state machine safety are asserted on every Ready, and after healing
/// every node converges on the same commands.
#[test]
fn random_faults_keep_safety_and_converge_after_healing() {
    for seed in 0..300 {
        let mut cluster = TestCluster::new(5, config(), seed);
        cluster.loss_ratio = 0.1;
        let ids: Vec<NodeId> = cluster.groups.keys().copied().collect();
        let mut proposed = 0;
        for step in 0..400u64 {
            let draw = cluster.rng.below(100);
            if draw < 3 {
                let id = ids[cluster.rng.below(ids.len() as u64) as usize];
                if cluster.crashed.len() < 2 {
                    cluster.crash(id);
                }
            } else if draw < 8 {
                let crashed: Vec<NodeId> = cluster.crashed.iter().copied().collect();
                if let Some(id) = crashed.first() {
                    cluster.restart(*id, seed);
                }
            } else if draw < 11 {
                let id = ids[cluster.rng.below(ids.len() as u64) as usize];
                cluster.isolate(id);
            } else if draw < 15 {
                cluster.heal();
            }
            if let Some(leader) = cluster.leader() {
                if cluster
                    .group(leader)
                    .propose(command(&format!("s{seed}-{step}")))
                    .is_ok()
                {
                    proposed += 1;
                }
            }
            let ids_now: Vec<NodeId> = cluster.groups.keys().copied().collect();
            for id in ids_now {
                if !cluster.crashed.contains(&id) {
                    cluster.group(id).tick();
                    cluster.process(id);
                }
            }
            cluster.deliver(true, 200);
        }
        // Liveness: heal everything and let it settle.
        cluster.loss_ratio = 0.0;
        cluster.heal();
        let crashed: Vec<NodeId> = cluster.crashed.iter().copied().collect();
        for id in crashed {
            cluster.restart(id, seed);
        }
        // A proposal to a leader that is about to be deposed may be lost (it was never
        // committed), so the client retries, as a real one would.
        let mut leader = cluster.elect();
        for _ in 0..10 {
            leader = cluster.elect();
            let _ = cluster.group(leader).propose(command("final"));
            cluster.tick_all(10);
            if cluster.commands(leader).contains(&command("final")) {
                break;
            }
        }
        cluster.tick_all(10);
        let expected = cluster.commands(leader).to_vec();
        assert!(
            expected.contains(&command("final")),
            "seed {seed}: the final write applied"
        );
        assert!(proposed > 0);
        for id in &ids {
            assert_eq!(
                cluster.commands(*id),
                expected.as_slice(),
                "seed {seed}: {id} converged"
            );
        }
    }
}
