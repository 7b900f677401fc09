//! Node selection: which node a call tries first, and which next.
//!
//! `conversation` uses rendezvous (highest-random-weight) hashing: every node
//! gets a score for the conversation key and the order is by score. A
//! conversation stays on its warm node while that node is healthy, and when a
//! node leaves only its own conversations move. `round_robin` rotates.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Balance;

/// Chooses the order in which nodes are tried.
#[derive(Debug)]
pub struct Balancer {
    mode: Balance,
    next: AtomicUsize,
}

impl Balancer {
    /// A balancer of the given mode.
    pub fn new(mode: Balance) -> Self {
        Self {
            mode,
            next: AtomicUsize::new(0),
        }
    }

    /// Indexes of `names` in the order to try them for `key`.
    pub fn order(&self, names: &[String], key: &str) -> Vec<usize> {
        let n = names.len();
        match self.mode {
            Balance::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
                (0..n).map(|i| (start + i) % n).collect()
            }
            Balance::Conversation => {
                let mut scored: Vec<(u64, usize)> = names
                    .iter()
                    .enumerate()
                    .map(|(i, name)| (score(name, key), i))
                    .collect();
                scored.sort_unstable_by(|a, b| b.cmp(a));
                scored.into_iter().map(|(_, i)| i).collect()
            }
        }
    }
}

/// A stable 64-bit score for (node, key). SipHash with fixed keys is stable
/// across processes, so every gateway node routes a conversation the same way.
fn score(node: &str, key: &str) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x6d6f_6c74, 0x6761_7465);
    node.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:50051")).collect()
    }

    #[test]
    fn conversation_is_sticky_and_spreads() {
        let b = Balancer::new(Balance::Conversation);
        let nodes = names(4);
        let mut firsts = [0usize; 4];
        for c in 0..400 {
            let key = format!("conv-{c}");
            let first = b.order(&nodes, &key)[0];
            assert_eq!(b.order(&nodes, &key)[0], first, "sticky");
            firsts[first] += 1;
        }
        assert!(firsts.iter().all(|&n| n > 50), "spread: {firsts:?}");
    }

    #[test]
    fn removing_a_node_moves_only_its_conversations() {
        let b = Balancer::new(Balance::Conversation);
        let all = names(4);
        let fewer: Vec<String> = all[..3].to_vec();
        for c in 0..200 {
            let key = format!("conv-{c}");
            let before = &all[b.order(&all, &key)[0]];
            let after = &fewer[b.order(&fewer, &key)[0]];
            if before != &all[3] {
                assert_eq!(before, after);
            }
        }
    }

    #[test]
    fn round_robin_rotates_and_covers_all() {
        let b = Balancer::new(Balance::RoundRobin);
        let nodes = names(3);
        let o1 = b.order(&nodes, "x");
        let o2 = b.order(&nodes, "x");
        assert_ne!(o1[0], o2[0]);
        let mut sorted = o1.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2]);
    }
}
