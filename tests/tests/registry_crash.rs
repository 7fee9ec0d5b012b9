//! The registry killed (SIGKILL) in the middle of pushes loses no push it
//! acknowledged and keeps no half-written one. A push is one sled
//! transaction flushed before the answer, so after a restart on the same
//! data dir: each function's latest bundle is byte for byte one that was
//! pushed to it, its last acknowledged version is the current one or the
//! one before (a push that was stored but not yet answered), served with
//! the exact bytes pushed, and version numbers go on growing, never
//! reused. Real registry processes; no root needed.
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sock_proto::v1::registry_client::RegistryClient;
use sock_proto::v1::{GetFunctionRequest, PushFunctionRequest};
use sock_testkit::process::{self, bundle_at, free_addr};
use tonic::transport::Channel;

const ROUNDS: u64 = 5;
const CLIENTS: usize = 4;
/// Pseudo-random text in each bundle, so that a push takes long enough to
/// be cut in the middle.
const FILLER_BYTES: usize = 128 << 10;

/// Push `seq` of client `client`: its own code and filler.
fn bundle(client: usize, seq: u64) -> Vec<u8> {
    let seed = ((client as u64) << 32) | seq;
    let filler = sock_testkit::functions::incompressible(seed, FILLER_BYTES);
    let code = format!("def f(event):\n    return \"{client}-{seq}\"\n");
    sock_testkit::functions::bundle(&[("f.py", &code), ("filler.txt", &filler)])
}

/// What one client pushed to its function: every bundle it sent (by push
/// number) and the versions the registry acknowledged.
#[derive(Default)]
struct Pushes {
    sent: Vec<Vec<u8>>,
    acknowledged: Vec<(u64, usize)>,
    /// Pushes that got no answer: in flight at the kill.
    cut: usize,
}

/// Pushes to `name` until the registry stops answering.
async fn push_until_killed(
    mut client: RegistryClient<Channel>,
    index: usize,
    name: String,
    mut pushes: Pushes,
    acknowledged: Arc<AtomicUsize>,
) -> Pushes {
    loop {
        let bundle = bundle(index, pushes.sent.len() as u64);
        pushes.sent.push(bundle.clone());
        let answer = client
            .push_function(PushFunctionRequest {
                name: name.clone(),
                bundle,
            })
            .await;
        match answer {
            Ok(info) => {
                pushes
                    .acknowledged
                    .push((info.into_inner().version, pushes.sent.len() - 1));
                acknowledged.fetch_add(1, Ordering::Relaxed);
            }
            Err(status) => {
                assert!(
                    matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                    ),
                    "a push cut by the kill fails as a transport error: {status:?}"
                );
                pushes.cut += 1;
                return pushes;
            }
        }
    }
}

/// Checks, after a restart, what the kills left of each client's pushes;
/// `current` remembers each function's version at the last check.
async fn check_after_kill(
    clients: &[Pushes],
    grpc: &str,
    http_addr: &str,
    current: &mut HashMap<String, u64>,
) {
    let mut registry = RegistryClient::new(
        Channel::from_shared(format!("http://{grpc}"))
            .expect("url")
            .connect_lazy(),
    );
    for (index, pushes) in clients.iter().enumerate() {
        let name = format!("f{index}");
        let Some(&(last_version, last_push)) = pushes.acknowledged.last() else {
            continue;
        };
        let info = registry
            .get_function(GetFunctionRequest { name: name.clone() })
            .await
            .expect("an acknowledged function survives the kill")
            .into_inner();
        assert!(
            info.version == last_version || info.version == last_version + 1,
            "{name}: version {} after the kill, last acknowledged {last_version}",
            info.version
        );
        let (latest, bytes) = bundle_at(http_addr, &format!("/functions/{name}")).await;
        assert_eq!(latest, info.version);
        assert!(
            pushes.sent.contains(&bytes),
            "{name}: the latest bundle is not one that was pushed (torn write)"
        );
        let (kept, bytes) = bundle_at(
            http_addr,
            &format!("/functions/{name}/versions/{last_version}"),
        )
        .await;
        assert_eq!(kept, last_version);
        assert!(
            bytes == pushes.sent[last_push],
            "{name}: version {last_version} does not serve the bytes acknowledged"
        );
        if let Some(before) = current.insert(name.clone(), info.version) {
            assert!(info.version >= before, "{name}: the version went back");
        }
        assert!(
            pushes.acknowledged.windows(2).all(|w| w[0].0 < w[1].0),
            "{name}: a version number was given out twice: {:?}",
            pushes.acknowledged
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_killed_mid_push_keeps_every_acknowledged_push_whole() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let (grpc, http_addr) = (free_addr(), free_addr());
    let mut clients: Vec<Pushes> = (0..CLIENTS).map(|_| Pushes::default()).collect();
    let mut current = HashMap::new();

    for round in 0..=ROUNDS {
        let mut registry = process::registry(data_dir.path(), &grpc, &http_addr, &[]).await;
        let url = format!("http://{grpc}");
        check_after_kill(&clients, &grpc, &http_addr, &mut current).await;
        if round == ROUNDS {
            registry.stop(Signal::SIGTERM);
            break;
        }

        // Pushes from every client, cut by a kill at a different moment
        // each round, once each client has had a push acknowledged.
        let acknowledged = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = std::mem::take(&mut clients)
            .into_iter()
            .enumerate()
            .map(|(index, pushes)| {
                let client = RegistryClient::new(
                    Channel::from_shared(url.clone())
                        .expect("url")
                        .connect_lazy(),
                )
                .max_encoding_message_size(64 << 20);
                tokio::spawn(push_until_killed(
                    client,
                    index,
                    format!("f{index}"),
                    pushes,
                    acknowledged.clone(),
                ))
            })
            .collect();
        let started = Instant::now();
        while acknowledged.load(Ordering::Relaxed) < CLIENTS {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "pushes are not acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(7 + 31 * round)).await;
        registry.stop(Signal::SIGKILL);
        for task in tasks {
            clients.push(task.await.expect("pusher"));
        }
    }

    // The test proved something only if pushes were acknowledged in every
    // round and each client's pushes were cut by the kill.
    let acknowledged: usize = clients.iter().map(|p| p.acknowledged.len()).sum();
    assert!(
        acknowledged >= CLIENTS * ROUNDS as usize,
        "only {acknowledged} pushes acknowledged in {ROUNDS} rounds"
    );
    let cut: usize = clients.iter().map(|p| p.cut).sum();
    assert_eq!(cut, CLIENTS * ROUNDS as usize);
}
