//! Admission control: concurrency limits with a bounded queue, as tower
//! layers.
//!
//! A [`ConcurrencyLimitLayer`] lets `max` calls of one scope (all calls,
//! or one function's) run at once. A call that finds its scope full waits
//! in the queue, which all limits share so that at most `max_queue` calls
//! wait in the gateway in total; it waits no longer than its deadline
//! (then: a timeout), and when the queue is full it is refused at once
//! (overloaded: gRPC RESOURCE_EXHAUSTED, HTTP 429 with `Retry-After`).
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::error::Error;

/// What admission needs to know of a call.
pub(crate) trait Admit {
    fn function(&self) -> &str;
    /// When the caller stops waiting for an answer.
    fn deadline(&self) -> Instant;
}

/// The waiting room every limit shares.
#[derive(Debug)]
pub(crate) struct Queue {
    waiting: AtomicUsize,
    max: usize,
}

impl Queue {
    pub fn new(max: usize) -> Arc<Queue> {
        Arc::new(Queue {
            waiting: AtomicUsize::new(0),
            max,
        })
    }

    /// Calls waiting right now.
    pub fn depth(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Takes a place in the queue, or says why there is none.
    fn enter(self: &Arc<Self>, scope: &str) -> Result<Place, Error> {
        let taken = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(Place(self.clone())),
            Err(_) => Err(Error::Overloaded(format!(
                "{scope} is at its concurrency limit and {} calls are already waiting",
                self.max
            ))),
        }
    }
}

/// A place in the queue, given back when dropped.
struct Place(Arc<Queue>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Clone, Debug)]
enum Scope {
    Global(Arc<Semaphore>),
    PerFunction {
        max: usize,
        functions: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    },
}

impl Scope {
    fn semaphore(&self, function: &str) -> Arc<Semaphore> {
        match self {
            Scope::Global(semaphore) => semaphore.clone(),
            Scope::PerFunction { max, functions } => {
                let mut functions = functions.lock().expect("admission lock");
                functions
                    .entry(function.to_string())
                    .or_insert_with(|| Arc::new(Semaphore::new(*max)))
                    .clone()
            }
        }
    }

    fn describe(&self, function: &str) -> String {
        match self {
            Scope::Global(_) => "the gateway".to_string(),
            Scope::PerFunction { .. } => format!("function '{function}'"),
        }
    }
}

/// Limits calls running at once in one scope; see the module docs.
#[derive(Clone, Debug)]
pub(crate) struct ConcurrencyLimitLayer {
    scope: Scope,
    queue: Arc<Queue>,
}

impl ConcurrencyLimitLayer {
    /// At most `max` calls at once, whatever the function.
    pub fn global(max: usize, queue: Arc<Queue>) -> Self {
        ConcurrencyLimitLayer {
            scope: Scope::Global(Arc::new(Semaphore::new(max))),
            queue,
        }
    }

    /// At most `max` calls of each function at once.
    pub fn per_function(max: usize, queue: Arc<Queue>) -> Self {
        ConcurrencyLimitLayer {
            scope: Scope::PerFunction {
                max,
                functions: Arc::default(),
            },
            queue,
        }
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            scope: self.scope.clone(),
            queue: self.queue.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct ConcurrencyLimit<S> {
    inner: S,
    scope: Scope,
    queue: Arc<Queue>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, R> Service<R> for ConcurrencyLimit<S>
where
    R: Admit + Send + 'static,
    S: Service<R, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
{
    type Response = S::Response;
    type Error = Error;
    type Future = BoxFuture<Result<S::Response, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // The service that was polled ready serves this call; the clone
        // stays for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let semaphore = self.scope.semaphore(request.function());
        let scope = self.scope.describe(request.function());
        let queue = self.queue.clone();
        let function = request.function().to_string();
        let deadline = request.deadline();
        Box::pin(async move {
            let _permit = admit(semaphore, &queue, &scope, &function, deadline).await?;
            inner.call(request).await
        })
    }
}

async fn admit(
    semaphore: Arc<Semaphore>,
    queue: &Arc<Queue>,
    scope: &str,
    function: &str,
    deadline: Instant,
) -> Result<OwnedSemaphorePermit, Error> {
    if let Ok(permit) = semaphore.clone().try_acquire_owned() {
        return Ok(permit);
    }
    let _place = queue.enter(scope)?;
    let wait = semaphore.acquire_owned();
    match tokio::time::timeout_at(deadline, wait).await {
        Ok(permit) => Ok(permit.expect("admission semaphores are never closed")),
        Err(_) => Err(Error::QueueTimeout {
            function: function.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::future::join_all;
    use tokio::sync::Notify;
    use tower::ServiceExt;

    use super::*;

    struct Call {
        function: &'static str,
        deadline: Instant,
    }

    impl Admit for Call {
        fn function(&self) -> &str {
            self.function
        }
        fn deadline(&self) -> Instant {
            self.deadline
        }
    }

    fn call(function: &'static str) -> Call {
        Call {
            function,
            deadline: Instant::now() + Duration::from_secs(10),
        }
    }

    /// A service whose calls run until `release` is notified, and which
    /// counts how many run at once.
    #[derive(Clone, Default)]
    struct Held {
        running: Arc<AtomicUsize>,
        peak: Arc<AtomicUsize>,
        release: Arc<Notify>,
    }

    impl Service<Call> for Held {
        type Response = &'static str;
        type Error = Error;
        type Future = BoxFuture<Result<&'static str, Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, call: Call) -> Self::Future {
            let held = self.clone();
            Box::pin(async move {
                let now = held.running.fetch_add(1, Ordering::SeqCst) + 1;
                held.peak.fetch_max(now, Ordering::SeqCst);
                held.release.notified().await;
                held.running.fetch_sub(1, Ordering::SeqCst);
                Ok(call.function)
            })
        }
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_global_limit_queues_then_refuses_the_excess() {
        let queue = Queue::new(2);
        let held = Held::default();
        let service = ConcurrencyLimitLayer::global(3, queue.clone()).layer(held.clone());
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let service = service.clone();
                let name = ["a", "b"][i % 2];
                tokio::spawn(async move { service.oneshot(call(name)).await })
            })
            .collect();
        settle().await;
        assert_eq!(held.running.load(Ordering::SeqCst), 3);
        assert_eq!(queue.depth(), 2);
        // Release callers one at a time until all have answered.
        let release = held.release.clone();
        let releaser = tokio::spawn(async move {
            loop {
                release.notify_waiters();
                settle().await;
            }
        });
        let results = join_all(calls).await;
        releaser.abort();
        let overloaded = results
            .iter()
            .filter(|r| matches!(r, Ok(Err(Error::Overloaded(_)))))
            .count();
        let answered = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!((answered, overloaded), (5, 3), "3 run, 2 wait, 3 refused");
        assert_eq!(held.peak.load(Ordering::SeqCst), 3);
        assert_eq!(queue.depth(), 0, "every place is given back");
    }

    #[tokio::test(start_paused = true)]
    async fn the_per_function_limit_leaves_other_functions_alone() {
        let queue = Queue::new(0);
        let held = Held::default();
        let service = ConcurrencyLimitLayer::per_function(2, queue).layer(held.clone());
        let mut running = Vec::new();
        for _ in 0..2 {
            let service = service.clone();
            running.push(tokio::spawn(
                async move { service.oneshot(call("hot")).await },
            ));
        }
        settle().await;
        let refused = service.clone().oneshot(call("hot")).await;
        match refused {
            Err(Error::Overloaded(message)) => assert!(
                message.starts_with("function 'hot' is at its concurrency limit"),
                "{message}"
            ),
            other => panic!("expected overloaded, got {other:?}"),
        }
        let other = tokio::spawn(service.clone().oneshot(call("cold")));
        settle().await;
        assert_eq!(held.running.load(Ordering::SeqCst), 3, "'cold' runs");
        held.release.notify_waiters();
        assert_eq!(other.await.expect("task").expect("answer"), "cold");
        for call in running {
            call.await.expect("task").expect("answer");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_call_waits_no_longer_than_its_deadline() {
        let queue = Queue::new(10);
        let held = Held::default();
        let service = ConcurrencyLimitLayer::global(1, queue.clone()).layer(held.clone());
        let first = tokio::spawn(service.clone().oneshot(call("a")));
        settle().await;
        let started = Instant::now();
        let late = service
            .clone()
            .oneshot(Call {
                function: "a",
                deadline: started + Duration::from_millis(250),
            })
            .await;
        assert!(matches!(late, Err(Error::QueueTimeout { .. })), "{late:?}");
        assert_eq!(started.elapsed(), Duration::from_millis(250));
        assert_eq!(queue.depth(), 0);
        held.release.notify_waiters();
        first.await.expect("task").expect("answer");
    }
}
