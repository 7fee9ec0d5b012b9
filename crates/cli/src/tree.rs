//! `sock tree [--rebuild]`: every node's import-cache tree, with what each
//! node's zygote served.
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use sock_proto::v1::gateway_client::GatewayClient;
use sock_proto::v1::{TreeNode, TreeRequest, TreeResponse};

use crate::admin::status_error;
use sock_cli::endpoints::{Endpoints, connect};

/// Prints each node's tree; with `rebuild`, each node's cache rebuilds its
/// learned tree first.
pub async fn tree(
    endpoints: &Endpoints,
    token: Option<&str>,
    rebuild: bool,
) -> anyhow::Result<ExitCode> {
    let mut request = tonic::Request::new(TreeRequest { rebuild });
    sock_cli::auth::bearer(&mut request, token)?;
    let trees = GatewayClient::new(connect(&endpoints.gateway).await?)
        .tree(request)
        .await
        .map_err(status_error)?
        .into_inner();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    print!("{}", render(&trees.nodes, now_ms));
    Ok(ExitCode::SUCCESS)
}

const HEADINGS: [&str; 7] = [
    "ZYGOTE", "HITS", "MISSES", "CHOSEN", "PSS MB", "LIVE", "LAST USE",
];

/// Per node a header line, then its tree indented by depth, one row per
/// tree node.
fn render(trees: &[TreeResponse], now_ms: u64) -> String {
    let mut out = String::new();
    for (i, tree) in trees.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "node {}: {}", tree.node, summary(tree, now_ms));
        if tree.nodes.is_empty() {
            out.push_str("  (no zygotes)\n");
            continue;
        }
        let rows: Vec<[String; 7]> = labels(&tree.nodes)
            .into_iter()
            .zip(&tree.nodes)
            .map(|(label, node)| row(label, node, now_ms))
            .collect();
        let width = rows
            .iter()
            .map(|r| r[0].chars().count())
            .chain([HEADINGS[0].len()])
            .max()
            .unwrap_or(0);
        let headings = HEADINGS.map(String::from);
        for [id, hits, misses, chosen, pss, live, last] in std::iter::once(&headings).chain(&rows) {
            let _ = writeln!(
                out,
                "  {id:<width$}  {hits:>6}  {misses:>6}  {chosen:>6}  {pss:>7}  {live:<4}  {last}"
            );
        }
    }
    out
}

/// What kind of tree a node has, and for a learned one what it was
/// built from.
fn summary(tree: &TreeResponse, now_ms: u64) -> String {
    match tree.source.as_str() {
        "learned" => {
            let rebuilt = match tree.rebuilt_unix_ms {
                0 => "not built yet".to_string(),
                at => format!("rebuilt {}", ago(at, now_ms)),
            };
            format!(
                "learned tree from {} functions, {rebuilt}, budget {} MB",
                tree.functions, tree.budget_mb
            )
        }
        "configured" => "configured tree (the cache's import_tree)".into(),
        "off" => "import cache off".into(),
        other => format!("{other} tree"),
    }
}

/// Each node's label: indented by depth, and only its last path segment
/// when it sits under its parent's id ("root/numpy==2.2.3" under "root");
/// the whole id otherwise (a configured node not yet resolved).
fn labels(nodes: &[TreeNode]) -> Vec<String> {
    // The last id seen at each depth: a node's parent is the one above it.
    let mut path: Vec<&str> = Vec::new();
    nodes
        .iter()
        .map(|node| {
            // Depth first: a node is at most one deeper than the one before.
            let depth = usize::try_from(node.depth)
                .unwrap_or(usize::MAX)
                .min(path.len());
            path.truncate(depth);
            let parent = path.last().copied();
            path.push(&node.id);
            let segment = parent
                .and_then(|parent| node.id.strip_prefix(parent))
                .and_then(|rest| rest.strip_prefix('/'))
                .unwrap_or(&node.id);
            format!("{}{segment}", "  ".repeat(depth))
        })
        .collect()
}

fn row(label: String, node: &TreeNode, now_ms: u64) -> [String; 7] {
    let pss = match node.live {
        true => format!("{:.1}", node.pss_kb as f64 / 1024.0),
        false => "-".into(),
    };
    let live = if node.live { "yes" } else { "no" };
    let last_use = node.last_fork_unix_ms.max(node.last_chosen_unix_ms);
    [
        label,
        node.hits.to_string(),
        node.misses.to_string(),
        node.chosen.to_string(),
        pss,
        live.into(),
        match last_use {
            0 => "never".into(),
            at => ago(at, now_ms),
        },
    ]
}

/// How long before `now_ms` the moment `at_ms` was, in its largest unit.
fn ago(at_ms: u64, now_ms: u64) -> String {
    let secs = now_ms.saturating_sub(at_ms) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3_600 => format!("{}m ago", secs / 60),
        3_600..86_400 => format!("{}h ago", secs / 3_600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn node(id: &str, depth: u32) -> TreeNode {
        TreeNode {
            id: id.into(),
            depth,
            ..TreeNode::default()
        }
    }

    #[test]
    fn each_node_gets_a_header_and_its_tree_indented_by_depth() {
        let learned = TreeResponse {
            node: "http://10.0.0.1:7072".into(),
            source: "learned".into(),
            rebuilt_unix_ms: NOW - 180_000,
            functions: 12,
            budget_mb: 2048,
            nodes: vec![
                TreeNode {
                    live: true,
                    hits: 10,
                    chosen: 12,
                    pss_kb: 25_907,
                    last_fork_unix_ms: NOW - 3_000,
                    ..node("root", 0)
                },
                TreeNode {
                    live: true,
                    hits: 5,
                    misses: 1,
                    chosen: 6,
                    pss_kb: 61_542,
                    last_fork_unix_ms: NOW - 7_200_000,
                    last_chosen_unix_ms: NOW - 60_000,
                    ..node("root/numpy==2.2.3", 1)
                },
                TreeNode {
                    misses: 2,
                    chosen: 2,
                    ..node("root/numpy==2.2.3/pandas==2.2.3", 2)
                },
                node("root/six==1.16.0", 1),
            ],
        };
        let configured = TreeResponse {
            node: "http://10.0.0.2:7072".into(),
            source: "configured".into(),
            nodes: vec![node("root", 0), node("requests, urllib3", 1)],
            ..TreeResponse::default()
        };
        let off = TreeResponse {
            node: "http://10.0.0.3:7072".into(),
            source: "off".into(),
            ..TreeResponse::default()
        };
        assert_eq!(
            render(&[learned, configured, off], NOW),
            "\
node http://10.0.0.1:7072: learned tree from 12 functions, rebuilt 3m ago, budget 2048 MB
  ZYGOTE               HITS  MISSES  CHOSEN   PSS MB  LIVE  LAST USE
  root                   10       0      12     25.3  yes   3s ago
    numpy==2.2.3          5       1       6     60.1  yes   1m ago
      pandas==2.2.3       0       2       2        -  no    never
    six==1.16.0           0       0       0        -  no    never

node http://10.0.0.2:7072: configured tree (the cache's import_tree)
  ZYGOTE                 HITS  MISSES  CHOSEN   PSS MB  LIVE  LAST USE
  root                      0       0       0        -  no    never
    requests, urllib3       0       0       0        -  no    never

node http://10.0.0.3:7072: import cache off
  (no zygotes)
"
        );
    }

    #[test]
    fn a_node_outside_its_parent_shows_its_whole_id() {
        // A zygote of an older tree, appended after the tree it is not in.
        let nodes = [
            node("root", 0),
            node("root/a==1", 1),
            node("root/old==1/older==2", 2),
        ];
        assert_eq!(
            labels(&nodes),
            ["root", "  a==1", "    root/old==1/older==2"]
        );
    }

    #[test]
    fn times_are_shown_in_their_largest_unit() {
        assert_eq!(ago(NOW - 59_999, NOW), "59s ago");
        assert_eq!(ago(NOW - 60_000, NOW), "1m ago");
        assert_eq!(ago(NOW - 7_200_000, NOW), "2h ago");
        assert_eq!(ago(NOW - 3 * 86_400_000, NOW), "3d ago");
        assert_eq!(ago(NOW + 5_000, NOW), "0s ago", "a clock ahead is now");
    }
}
