//! A real Kafka-protocol broker for the tests of Kafka triggers: `tansu`,
//! in-memory, on a free port, stopped by pid when dropped. `.ci/run`
//! installs it; without it a test fails, unless `SOCK_TEST_ALLOW_SKIP=1`.
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};

const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Broker {
    process: Child,
    /// `127.0.0.1:PORT`, as `bootstrap_servers` lists it.
    pub addr: String,
}

/// `tansu` on PATH, or where `cargo install` puts it.
fn tansu() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>());
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    on_path
        .chain(cargo_home.map(|home| home.join("bin")))
        .map(|dir| dir.join("tansu"))
        .find(|path| path.is_file())
}

impl Broker {
    /// Starts a broker of its own. Without `tansu` this fails the test,
    /// unless `SOCK_TEST_ALLOW_SKIP=1`: then it prints a loud notice and
    /// answers `None`, and the caller returns.
    pub fn start() -> Option<Broker> {
        let Some(tansu) = tansu() else {
            assert!(
                std::env::var("SOCK_TEST_ALLOW_SKIP").is_ok_and(|v| v == "1"),
                "this test needs the Kafka broker `tansu` (cargo install tansu --features \
                 dynostore); set SOCK_TEST_ALLOW_SKIP=1 to skip it"
            );
            eprintln!("\n*** SKIPPED: no `tansu` Kafka broker (SOCK_TEST_ALLOW_SKIP=1) ***\n");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let url = format!("tcp://{addr}");
        let process = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            // Its settings also come from the environment; only ours count.
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("STORAGE_ENGINE")
            .env_remove("CLUSTER_ID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start tansu");
        let mut broker = Broker { process, addr };
        let started = Instant::now();
        while TcpStream::connect(&broker.addr).is_err() {
            if let Some(status) = broker.process.try_wait().expect("poll tansu") {
                panic!("tansu exited before it listened: {status}");
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "tansu not listening after {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(broker)
    }

    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.addr);
        config
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> =
            self.client().create().expect("a Kafka admin client");
        let created = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect("create topics");
        for result in created {
            result.unwrap_or_else(|(topic, e)| panic!("create topic {topic}: {e}"));
        }
    }

    /// Produces each value to `topic` (keyed by itself, so values spread
    /// over the partitions) and waits until the broker has them all.
    pub async fn produce(&self, topic: &str, values: &[String]) {
        let producer: FutureProducer = self
            .client()
            .set("message.timeout.ms", "30000")
            .create()
            .expect("a Kafka producer");
        for value in values {
            producer
                .send(
                    FutureRecord::to(topic).key(value).payload(value),
                    Duration::from_secs(30),
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("produce {value} to {topic}: {e}"));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.process.try_wait().ok().flatten().is_none() {
            if let Ok(pid) = i32::try_from(self.process.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = self.process.wait();
        }
    }
}
