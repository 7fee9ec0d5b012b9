//! Cron triggers: every gateway fires the `triggers.cron` schedules of
//! every function, and each fire time runs once across the cluster.
//!
//! The schedules come from the registry's `ListFunctions` (its answer
//! holds each function's config), asked every `cron_refresh_ms` and at
//! once when the registry announces a change (`watch`) or a push or delete
//! goes through this gateway's `/registry`. At a
//! fire time each gateway asks the registry to `ClaimFiring` (function,
//! schedule, fire time) for itself; the first claimant wins and fires, the
//! others count the firing as lost. A lease per firing rather than a
//! leader: no gateway holds anything between firings, so one that dies
//! leaves no lease to run out and the next fire time goes to a live one.
//! While the registry cannot be reached nothing fires (a firing nobody
//! could claim might run twice). Fire times missed while no gateway ran
//! are not made up, as OpenLambda's boss does not either.
//!
//! A firing is what OpenLambda's boss sends: an HTTP `POST` of `{}` to the
//! function, through the same path as every call (admission control,
//! node, deadline), in a span with `sock.trigger` = `cron`. It also says
//! which schedule and fire time it is (`x-sock-cron-*` headers, for
//! apps). `triggers.http` limits HTTP calls, not this trigger.
//!
//! In detail: the scheduler starts beside the servers and stops with the
//! same token, waiting for its firings in flight. It reads the schedules
//! every `cron_refresh_ms` (10 s) and keeps the last answer while the
//! registry is down; a schedule dropped by a delete or a new version
//! stops. A holder is `gateway-<uuid>`, one per process; the same holder
//! asking again wins again. The price of a lease per firing is one
//! registry call per gateway per fire time, and no firing while the
//! registry is unreachable (`claim_failed`: at most once rather than maybe
//! twice); two gateways with stale views can never both fire one time. A
//! firing is a `POST` of `{}` to `/` with `x-sock-trigger: cron`,
//! `x-sock-cron-schedule` and `x-sock-cron-fire-time` (RFC 3339, UTC), in
//! an `invoke` span whose `sock.trigger` is `cron` (`grpc` and `http` for
//! the other doors). A schedule that fell behind (the gateway was stopped
//! or starved) fires once, for its latest time; after an outage a burst of
//! old firings is rarely wanted. A failure (an error, or an answer other
//! than 2xx) is logged at warn with function, schedule, fire time and
//! reason, and every firing is counted in
//! `sock_gateway_cron_firings_total{function,outcome=ok|failed|lost|claim_failed}`.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use sock_bundle::Schedule;
use sock_proto::v1::registry_client::RegistryClient;
use sock_proto::v1::{
    ClaimFiringRequest, FunctionInfo, HttpHeader, HttpRequest, ListFunctionsRequest,
};
use sock_service::AuthedChannel;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::error::reason;
use crate::grpc::call_span;
use crate::invoke::{Answer, Invocation, Invoker, Outcome};
use crate::metrics::Metrics;

/// Request headers of a firing.
pub const TRIGGER_HEADER: &str = "x-sock-trigger";
pub const SCHEDULE_HEADER: &str = "x-sock-cron-schedule";
/// The fire time, RFC 3339 in UTC with milliseconds.
pub const FIRE_TIME_HEADER: &str = "x-sock-cron-fire-time";

/// Asks the scheduler to read the registry again now.
#[derive(Clone, Default)]
pub(crate) struct Refresh(Arc<Notify>);

impl Refresh {
    /// After a push or delete through this gateway: its schedules changed.
    pub fn now(&self) {
        // A permit is kept if the scheduler is busy, so none is lost.
        self.0.notify_one();
    }
}

pub(crate) struct Scheduler {
    pub registry: RegistryClient<AuthedChannel>,
    pub invoker: Arc<Invoker>,
    pub metrics: Arc<Metrics>,
    pub refresh_every: Duration,
    pub refresh: Refresh,
    /// This gateway in claims: unique per process.
    pub holder: String,
}

impl Scheduler {
    /// Fires schedules until `stop`, then waits for firings in flight.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut timetable = Timetable::default();
        let firings = TaskTracker::new();
        let mut reachable = true;
        let mut refresh_at = Instant::now();
        loop {
            if Instant::now() >= refresh_at {
                reachable = self.refresh(&mut timetable, reachable).await;
                refresh_at = Instant::now() + self.refresh_every;
            }
            for firing in timetable.due(now_unix_ms()) {
                firings.spawn(self.clone().fire(firing));
            }
            let wake = timetable.next_fire_unix_ms().map_or(refresh_at, |at| {
                let wait = u64::try_from(at.saturating_sub(now_unix_ms())).unwrap_or(0);
                refresh_at.min(Instant::now() + Duration::from_millis(wait))
            });
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(wake) => {}
                () = self.refresh.0.notified() => refresh_at = Instant::now(),
            }
        }
        firings.close();
        firings.wait().await;
    }

    /// Reads every function's schedules; on failure keeps the ones known
    /// (they cannot be claimed meanwhile anyway). Says whether the
    /// registry answered, so an outage is logged once, not every refresh.
    async fn refresh(&self, timetable: &mut Timetable, was_reachable: bool) -> bool {
        let listed = self
            .registry
            .clone()
            .list_functions(ListFunctionsRequest {})
            .instrument(tracing::debug_span!("registry.list_functions"))
            .await;
        match listed {
            Ok(answer) => {
                timetable.update(&answer.into_inner().functions, now_unix_ms());
                true
            }
            Err(status) => {
                if was_reachable {
                    tracing::warn!(error = %reason(&status), "cannot read cron triggers from the registry; no cron firing until it answers");
                }
                false
            }
        }
    }

    async fn fire(self: Arc<Self>, firing: Firing) {
        let Firing {
            function,
            schedule,
            fire_at_unix_ms,
        } = firing;
        let fire_time = DateTime::from_timestamp_millis(fire_at_unix_ms)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        let claim = ClaimFiringRequest {
            name: function.clone(),
            schedule: schedule.clone(),
            fire_at_unix_ms,
            holder: self.holder.clone(),
        };
        match self.registry.clone().claim_firing(claim).await {
            Ok(answer) if answer.get_ref().claimed => {}
            Ok(_) => {
                self.metrics.cron_firing(&function, "lost");
                tracing::debug!(%function, %schedule, %fire_time, "another gateway claimed this cron firing");
                return;
            }
            Err(status) => {
                self.metrics.cron_firing(&function, "claim_failed");
                tracing::warn!(%function, %schedule, %fire_time, error = %reason(&status), "cron firing skipped: it could not be claimed in the registry");
                return;
            }
        }
        let (call_id, span) = call_span(&function, "cron");
        let header = |name: &str, value: &str| HttpHeader {
            name: name.to_string(),
            value: value.to_string(),
        };
        let invocation = Invocation {
            function: function.clone(),
            // What OpenLambda's boss sends.
            payload: b"{}".to_vec(),
            timeout_ms: None,
            deadline_left: None,
            http: Some(HttpRequest {
                method: "POST".into(),
                path: "/".into(),
                query: String::new(),
                headers: vec![
                    header("content-type", "application/json"),
                    header(TRIGGER_HEADER, "cron"),
                    header(SCHEDULE_HEADER, &schedule),
                    header(FIRE_TIME_HEADER, &fire_time),
                ],
                root_path: format!("/run/{function}"),
            }),
        };
        let result = self
            .invoker
            .invoke(invocation, None, &call_id)
            .instrument(span.clone())
            .await;
        match failure(result) {
            None => {
                self.metrics.cron_firing(&function, "ok");
                span.in_scope(|| tracing::debug!(%schedule, %fire_time, "cron firing done"));
            }
            Some(why) => {
                self.metrics.cron_firing(&function, "failed");
                span.in_scope(|| {
                    tracing::warn!(%function, %schedule, %fire_time, reason = %why, "cron firing failed")
                });
            }
        }
    }
}

/// Why a firing failed, if it did: an error, or an answer other than 2xx
/// (OpenLambda's boss logs any answer but 200 as an error).
fn failure(result: Result<Answer, crate::error::Error>) -> Option<String> {
    match result {
        Ok(Answer {
            outcome: Outcome::Result(_),
            ..
        }) => None,
        Ok(Answer {
            outcome: Outcome::Http(response),
            ..
        }) if (200..300).contains(&response.status) => None,
        Ok(Answer {
            outcome: Outcome::Http(response),
            ..
        }) => Some(format!("the function answered HTTP {}", response.status)),
        Ok(Answer {
            outcome: Outcome::Error(error),
            ..
        }) => Some(error.message),
        Err(error) => Some(error.to_string()),
    }
}

fn now_unix_ms() -> i64 {
    DateTime::<Utc>::from(SystemTime::now()).timestamp_millis()
}

/// One fire time of one schedule.
#[derive(Debug, PartialEq)]
struct Firing {
    function: String,
    schedule: String,
    fire_at_unix_ms: i64,
}

/// Every known schedule and its next fire time.
#[derive(Default)]
struct Timetable {
    /// (function, schedule as ol.yaml spells it) → parsed, next fire time.
    entries: HashMap<(String, String), (Schedule, i64)>,
}

impl Timetable {
    /// Takes the registry's functions as the whole truth: schedules kept
    /// keep their next fire time, new ones start after `now`, and those of
    /// functions gone or pushed without them are dropped.
    fn update(&mut self, functions: &[FunctionInfo], now: i64) {
        let mut entries = HashMap::new();
        for info in functions {
            let triggers = info.config.as_ref().map_or(&[][..], |c| &c.cron[..]);
            for trigger in triggers {
                let key = (info.name.clone(), trigger.schedule.clone());
                if let Some(kept) = self.entries.remove(&key) {
                    entries.insert(key, kept);
                    continue;
                }
                // The registry refused bad schedules at push; one it holds
                // from before that check is skipped, not fatal.
                let parsed = match Schedule::parse(&trigger.schedule) {
                    Ok(parsed) => parsed,
                    Err(why) => {
                        tracing::warn!(function = %info.name, schedule = %trigger.schedule, %why, "cron trigger ignored");
                        continue;
                    }
                };
                if let Some(next) = parsed.next_after_unix_ms(now) {
                    entries.insert(key, (parsed, next));
                }
            }
        }
        self.entries = entries;
    }

    fn next_fire_unix_ms(&self) -> Option<i64> {
        self.entries.values().map(|(_, next)| *next).min()
    }

    /// The firings due at `now`. A schedule that fell behind (the gateway
    /// was stopped or starved past several fire times) fires once, for its
    /// latest fire time, as robfig/cron does for OpenLambda; its next one
    /// is after `now`.
    fn due(&mut self, now: i64) -> Vec<Firing> {
        let mut due = Vec::new();
        self.entries.retain(|(function, schedule), (parsed, next)| {
            if *next > now {
                return true;
            }
            let mut latest = *next;
            while let Some(after) = parsed.next_after_unix_ms(latest).filter(|t| *t <= now) {
                latest = after;
            }
            due.push(Firing {
                function: function.clone(),
                schedule: schedule.clone(),
                fire_at_unix_ms: latest,
            });
            match parsed.next_after_unix_ms(now) {
                Some(after) => {
                    *next = after;
                    true
                }
                None => false,
            }
        });
        due
    }
}

#[cfg(test)]
mod tests {
    use sock_proto::v1::{CronTrigger, FunctionConfig};

    use super::*;

    /// 2025-12-01T03:00:00Z, a whole minute.
    const T0: i64 = 1_764_558_000_000;

    fn function(name: &str, schedules: &[&str]) -> FunctionInfo {
        FunctionInfo {
            name: name.into(),
            config: Some(FunctionConfig {
                cron: schedules
                    .iter()
                    .map(|s| CronTrigger {
                        schedule: (*s).into(),
                    })
                    .collect(),
                ..FunctionConfig::default()
            }),
            ..FunctionInfo::default()
        }
    }

    fn firing(function: &str, schedule: &str, at: i64) -> Firing {
        Firing {
            function: function.into(),
            schedule: schedule.into(),
            fire_at_unix_ms: at,
        }
    }

    fn sorted(mut firings: Vec<Firing>) -> Vec<Firing> {
        firings.sort_by(|a, b| (&a.function, &a.schedule).cmp(&(&b.function, &b.schedule)));
        firings
    }

    #[test]
    fn schedules_fire_at_their_times_and_not_before() {
        let mut table = Timetable::default();
        table.update(
            &[
                function("a", &["*/2 * * * * *"]),
                function("b", &["* * * * *", "*/2 * * * * *"]),
                function("plain", &[]),
            ],
            T0 + 500,
        );
        assert_eq!(table.next_fire_unix_ms(), Some(T0 + 2000));
        assert!(table.due(T0 + 1999).is_empty());
        assert_eq!(
            sorted(table.due(T0 + 2000)),
            [
                firing("a", "*/2 * * * * *", T0 + 2000),
                firing("b", "*/2 * * * * *", T0 + 2000),
            ]
        );
        assert!(table.due(T0 + 2001).is_empty(), "each fire time once");
        assert_eq!(table.next_fire_unix_ms(), Some(T0 + 4000));
        assert_eq!(
            sorted(table.due(T0 + 60_000)),
            [
                firing("a", "*/2 * * * * *", T0 + 60_000),
                firing("b", "* * * * *", T0 + 60_000),
                firing("b", "*/2 * * * * *", T0 + 60_000),
            ],
            "a schedule that fell behind fires once, for its latest time"
        );
        assert_eq!(table.next_fire_unix_ms(), Some(T0 + 62_000));
    }

    #[test]
    fn a_refresh_keeps_known_schedules_and_drops_gone_ones() {
        let mut table = Timetable::default();
        table.update(
            &[
                function("a", &["*/2 * * * * *"]),
                function("b", &["*/2 * * * * *"]),
            ],
            T0,
        );
        // Refreshed after a fire time was due but before it was fired:
        // the kept schedule still fires it.
        table.update(
            &[
                function("a", &["*/2 * * * * *"]),
                function("c", &["*/2 * * * * *"]),
            ],
            T0 + 2500,
        );
        assert_eq!(
            sorted(table.due(T0 + 2500)),
            [firing("a", "*/2 * * * * *", T0 + 2000)],
            "b is deleted; c is new and starts after the refresh"
        );
        assert_eq!(
            sorted(table.due(T0 + 4000)),
            [
                firing("a", "*/2 * * * * *", T0 + 4000),
                firing("c", "*/2 * * * * *", T0 + 4000),
            ]
        );
        // A new version without the trigger stops it.
        table.update(
            &[function("a", &[]), function("c", &["*/2 * * * * *"])],
            T0 + 4100,
        );
        assert_eq!(
            sorted(table.due(T0 + 6000)),
            [firing("c", "*/2 * * * * *", T0 + 6000)]
        );
        table.update(&[], T0 + 6100);
        assert_eq!(table.next_fire_unix_ms(), None);
    }

    #[test]
    fn a_bad_stored_schedule_is_skipped() {
        let mut table = Timetable::default();
        table.update(&[function("a", &["nonsense", "*/2 * * * * *"])], T0);
        assert_eq!(table.entries.len(), 1);
    }

    #[test]
    fn failures_are_errors_and_answers_other_than_2xx() {
        let http = |status| {
            Ok(Answer {
                outcome: Outcome::Http(sock_proto::v1::HttpResponse {
                    status,
                    ..Default::default()
                }),
                version: 1,
            })
        };
        assert_eq!(failure(http(204)), None);
        assert_eq!(
            failure(http(500)).as_deref(),
            Some("the function answered HTTP 500")
        );
        let raised = Ok(Answer {
            outcome: Outcome::Error(sock_proto::v1::FunctionError {
                message: "ZeroDivisionError: division by zero".into(),
                ..Default::default()
            }),
            version: 1,
        });
        assert_eq!(
            failure(raised).as_deref(),
            Some("ZeroDivisionError: division by zero")
        );
        assert!(
            failure(Err(crate::error::Error::NotFound("a".into())))
                .is_some_and(|why| why.contains("'a'"))
        );
    }
}
