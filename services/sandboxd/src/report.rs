//! The Tree RPC's answer: the cache's import-cache tree, with what this
//! node's zygotes did filled in per node.
//!
//! The cache's `Tree` is asked (passing `rebuild` on), and each node is
//! filled in from the zygote tree: live, hits (cold starts forked from it),
//! misses (cold starts whose chain ended there that an ancestor or a fresh
//! sandbox served), PSS (`/proc/<pid>/smaps_rollup` of the processes in the
//! zygote's cgroup) and last fork; live zygotes the cache's tree does not
//! list are appended. Hits and misses are kept per id across zygotes, for
//! at most 1024 ids (the least recently used go).
use std::collections::HashSet;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sock_proto::v1::{TreeNode, TreeResponse};

use crate::tree::NodeReport;

/// One moment on both clocks: zygotes keep `Instant`s, the answer has
/// unix time.
#[derive(Clone, Copy)]
pub(crate) struct Now {
    pub instant: Instant,
    pub wall: SystemTime,
}

impl Now {
    pub fn new() -> Now {
        Now {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn unix_ms(self, at: Instant) -> u64 {
        sock_service::unix_ms(
            self.wall
                .checked_sub(self.instant.saturating_duration_since(at))
                .unwrap_or(UNIX_EPOCH),
        )
    }
}

/// `tree` with each node's zygote filled in from `reports` (sorted by
/// id), and the live zygotes it does not list appended: an older tree's
/// nodes still serving, which operators should see too. An appended
/// node's depth is its id's, one per `/`.
pub(crate) fn fill(mut tree: TreeResponse, reports: &[NodeReport], now: Now) -> TreeResponse {
    let report_of = |id: &str| {
        reports
            .binary_search_by(|r| r.id.as_str().cmp(id))
            .ok()
            .map(|i| &reports[i])
    };
    for node in &mut tree.nodes {
        if let Some(report) = report_of(&node.id) {
            apply(node, report, now);
        }
    }
    let listed: HashSet<&str> = tree.nodes.iter().map(|n| n.id.as_str()).collect();
    let unlisted: Vec<TreeNode> = reports
        .iter()
        .filter(|r| r.zygote.is_some() && !listed.contains(r.id.as_str()))
        .map(|report| {
            let mut node = TreeNode {
                id: report.id.clone(),
                depth: u32::try_from(report.id.matches('/').count()).unwrap_or(u32::MAX),
                ..TreeNode::default()
            };
            apply(&mut node, report, now);
            node
        })
        .collect();
    tree.nodes.extend(unlisted);
    tree
}

fn apply(node: &mut TreeNode, report: &NodeReport, now: Now) {
    node.hits = report.uses.hits;
    node.misses = report.uses.misses;
    if let Some(zygote) = report.zygote {
        node.live = true;
        node.pss_kb = zygote.pss_kb;
        node.last_fork_unix_ms = now.unix_ms(zygote.last_fork);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::tree::{LiveZygote, Uses};

    fn node(id: &str, depth: u32) -> TreeNode {
        TreeNode {
            id: id.into(),
            depth,
            chosen: 7,
            ..TreeNode::default()
        }
    }

    #[test]
    fn the_cache_tree_gets_the_zygotes_and_unlisted_live_ones_are_appended() {
        let now = Now {
            instant: Instant::now() + Duration::from_secs(10),
            wall: UNIX_EPOCH + Duration::from_secs(1_000_000),
        };
        let live = |pss_kb, secs_ago| {
            Some(LiveZygote {
                pss_kb,
                last_fork: now.instant - Duration::from_secs(secs_ago),
            })
        };
        let reports = [
            NodeReport {
                id: "root".into(),
                uses: Uses { hits: 3, misses: 0 },
                zygote: live(20_000, 2),
            },
            NodeReport {
                id: "root/a==1".into(),
                uses: Uses { hits: 0, misses: 2 },
                zygote: None,
            },
            // Counted once, its zygote gone: not shown unless listed.
            NodeReport {
                id: "root/gone==1".into(),
                uses: Uses { hits: 1, misses: 0 },
                zygote: None,
            },
            NodeReport {
                id: "root/old==1/older==2".into(),
                uses: Uses { hits: 5, misses: 0 },
                zygote: live(30_000, 1),
            },
        ];
        let tree = TreeResponse {
            source: "learned".into(),
            nodes: vec![node("root", 0), node("root/a==1", 1), node("root/b==1", 1)],
            functions: 4,
            ..TreeResponse::default()
        };
        let filled = fill(tree, &reports, now);
        assert_eq!(filled.source, "learned");
        assert_eq!(filled.functions, 4);
        let got: Vec<_> = filled
            .nodes
            .iter()
            .map(|n| {
                (
                    n.id.as_str(),
                    n.depth,
                    n.chosen,
                    n.live,
                    n.hits,
                    n.misses,
                    n.pss_kb,
                    n.last_fork_unix_ms,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("root", 0, 7, true, 3, 0, 20_000, 999_998_000),
                ("root/a==1", 1, 7, false, 0, 2, 0, 0),
                ("root/b==1", 1, 7, false, 0, 0, 0, 0),
                (
                    "root/old==1/older==2",
                    2,
                    0,
                    true,
                    5,
                    0,
                    30_000,
                    999_999_000
                ),
            ]
        );
    }
}
