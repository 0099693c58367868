//! One delivered command, from decoding it to acking it: the starting check, the action under
//! heartbeats, the report until the shard settles it, and the ack (steps 1 to 4 of the
//! [`runner`](super) module).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use noetl_bus::commands::{AckKind, Delivery};
use noetl_contract::command::{
    Heartbeat, HeartbeatAck, ReportAck, StepCommand, StepOutcome, StepReport,
};
use noetl_contract::message::WireErrorCode;
use noetl_contract::subject::{self, ShardRequest};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Backoff, Runner};
use crate::actions::ActionContext;

/// Shortest interval between heartbeats, however short the lease.
const MIN_BEAT: Duration = Duration::from_millis(50);
/// When a running step's first heartbeat goes (after the starting check), unless its interval
/// is shorter: a step that ends sooner costs its shard no write for its start (the report
/// records it); a longer one gets the step lease and its `running` mark this soon.
const FIRST_BEAT_AFTER: Duration = Duration::from_secs(1);

/// Everything about one delivered command; `running` is returned once its action is over.
pub(super) async fn handle(
    runner: Arc<Runner>,
    pool: Arc<str>,
    delivery: Delivery,
    running: OwnedSemaphorePermit,
) {
    if delivery.info().is_ok_and(|info| info.delivered > 1) {
        metrics::counter!("noetl_worker_redeliveries_total", "pool" => pool.to_string())
            .increment(1);
    }
    let command: StepCommand = match noetl_bus::decode(delivery.subject.as_str(), &delivery.payload)
    {
        Ok(command) => command,
        Err(error) => {
            tracing::error!(%pool, %error, "undecodable command; terminating it");
            metrics::counter!("noetl_worker_undecodable_total", "pool" => pool.to_string())
                .increment(1);
            if let Err(error) = delivery.ack_with(AckKind::Term).await {
                tracing::warn!(%pool, %error, "could not terminate an undecodable command");
            }
            return;
        }
    };
    let span = tracing::info_span!(
        "step",
        %pool,
        execution_id = %command.execution_id,
        step = %command.step,
        attempt = command.attempt.get(),
        action = %command.action,
    );
    noetl_bus::trace::join(&span, command.execution_id, delivery.headers.as_ref());
    runner
        .step(&pool, &delivery, &command, running)
        .instrument(span)
        .await;
}

/// A running step's heartbeat to its shard, and the token a `stop` answer cancels.
struct ShardBeat<'a> {
    command: &'a StepCommand,
    heartbeat: &'a Heartbeat,
    stop: &'a CancellationToken,
}

impl Runner {
    async fn step(
        &self,
        pool: &str,
        delivery: &Delivery,
        command: &StepCommand,
        running: OwnedSemaphorePermit,
    ) {
        let known = self.registry.get(&command.action);
        let action = known.map_or("unknown", |action| action.name());
        // An unknown action fails at once without doing anything, like an effect-free one.
        let has_effects = known.is_some_and(|action| action.has_effects());
        let interval = beat_interval(command.lease_ms, self.ack_wait);
        let check = Heartbeat {
            execution_id: command.execution_id,
            step_index: command.step_index,
            attempt: command.attempt,
            worker: self.worker.clone(),
            starting: true,
            started_at_ms: None,
            token: command.token,
            item: command.item,
        };
        if has_effects
            && self.heartbeat(command, &check, interval).await == Some(HeartbeatAck::Stop)
        {
            tracing::info!("the shard says stop; not starting the step");
            count_step(pool, action, "stopped");
            self.ack(delivery).await;
            return;
        }

        let started_at_ms = noetl_bus::unix_now_ms();
        let heartbeat = Heartbeat {
            starting: false,
            started_at_ms: Some(started_at_ms),
            ..check
        };
        let stop = CancellationToken::new();
        let beat = ShardBeat {
            command,
            heartbeat: &heartbeat,
            stop: &stop,
        };
        let ctx = ActionContext {
            attempt: command.attempt.get(),
            pool: Arc::from(pool),
        };
        let timeout = Duration::from_millis(command.timeout_ms);
        let started = Instant::now();
        let first_beat = interval.min(FIRST_BEAT_AFTER);
        let outcome = tokio::select! {
            outcome = self.registry.execute(&command.action, &command.with, &ctx, timeout, &stop) => outcome,
            never = self.keep_alive(delivery, first_beat, interval, &beat) => match never {},
        };
        let elapsed = started.elapsed();
        metrics::histogram!("noetl_worker_step_seconds", "action" => action)
            .record(elapsed.as_secs_f64());
        if stop.is_cancelled() {
            tracing::info!("the shard says stop; step cancelled, nothing to report");
            count_step(pool, action, "stopped");
            self.ack(delivery).await;
            return;
        }
        let label = match &outcome {
            StepOutcome::Succeeded { .. } => "succeeded",
            StepOutcome::Failed { error } => {
                tracing::info!(%error, elapsed_ms = elapsed.as_millis(), "step failed");
                "failed"
            }
        };
        count_step(pool, action, label);
        tracing::debug!(
            outcome = label,
            elapsed_ms = elapsed.as_millis(),
            "step finished"
        );

        let report = StepReport {
            execution_id: command.execution_id,
            step_index: command.step_index,
            attempt: command.attempt,
            outcome,
            started_at_ms,
            finished_at_ms: noetl_bus::unix_now_ms(),
            worker: self.worker.clone(),
            token: command.token,
            item: command.item,
        };
        // The attempt keeps its lease while its result waits for an answer: a report that lands
        // on a server that cannot answer (paused, cut off from its database) is retried, and
        // without heartbeats the lease ran out meanwhile and a finished step ran again (found by
        // noetl-chaos: five attempts of a `noop` lost this way failed an execution).
        let beat = ShardBeat {
            command,
            heartbeat: &heartbeat,
            stop: &stop,
        };
        let reported = async {
            let _reporting = self.reporting_slot(running).await;
            self.report(command, &report).await
        };
        let settled = tokio::select! {
            settled = reported => settled,
            never = self.keep_alive(delivery, interval, interval, &beat) => match never {},
        };
        let reply = match settled {
            Some(reply) => {
                self.ack(delivery).await;
                reply
            }
            None => {
                tracing::warn!(
                    "shutting down before the shard recorded the result; \
                     the command stays unacked and will be redelivered"
                );
                "abandoned"
            }
        };
        metrics::counter!("noetl_worker_reports_total", "pool" => pool.to_owned(), "reply" => reply)
            .increment(1);
    }

    /// After `first`, then every `interval`: tells JetStream the command is still in hand and,
    /// while the action runs or its report is unanswered, heartbeats the shard; a `stop` answer
    /// fires the step's stop token.
    async fn keep_alive(
        &self,
        delivery: &Delivery,
        first: Duration,
        interval: Duration,
        beat: &ShardBeat<'_>,
    ) -> Infallible {
        let mut ticks = tokio::time::interval_at(Instant::now() + first, interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(error) = delivery.ack_with(AckKind::Progress).await {
                tracing::warn!(%error, "could not extend the command's ack deadline");
            }
            if beat.stop.is_cancelled() {
                continue;
            }
            if self.heartbeat(beat.command, beat.heartbeat, interval).await
                == Some(HeartbeatAck::Stop)
            {
                beat.stop.cancel();
            }
        }
    }

    /// One heartbeat; `None` when the shard did not answer in time (logged, not fatal: the
    /// lease is what protects the step, and the next beat may get through).
    async fn heartbeat(
        &self,
        command: &StepCommand,
        heartbeat: &Heartbeat,
        interval: Duration,
    ) -> Option<HeartbeatAck> {
        let subject =
            subject::shard_request(ShardRequest::Heartbeat, command.shard, command.execution_id);
        let timeout = self.request_timeout.min(interval.max(MIN_BEAT));
        match noetl_bus::request(&self.client, subject, heartbeat, timeout).await {
            Ok(ack) => Some(ack),
            Err(error) => {
                tracing::warn!(%error, "heartbeat not answered");
                None
            }
        }
    }

    /// Trades a finished step's running slot for a reporting slot, once one is free.
    async fn reporting_slot(&self, running: OwnedSemaphorePermit) -> Option<OwnedSemaphorePermit> {
        // The semaphore is never closed, so this waits for a slot and never fails.
        let reporting = self.reporting.clone().acquire_owned().await.ok();
        drop(running);
        reporting
    }

    /// Sends the report until the shard settles it, or for `report_deadline`; `None` when
    /// shutdown came first. A report over NATS `max_payload` is never sent: a small
    /// `result_too_large` failure goes in its place.
    async fn report(&self, command: &StepCommand, report: &StepReport) -> Option<&'static str> {
        let subject =
            subject::shard_request(ShardRequest::Result, command.shard, command.execution_id);
        let mut report = std::borrow::Cow::Borrowed(report);
        let mut backoff = Backoff::new();
        let give_up = Instant::now() + self.report_deadline;
        loop {
            let answer = noetl_bus::request::<_, ReportAck>(
                &self.client,
                subject.clone(),
                report.as_ref(),
                self.request_timeout,
            )
            .await;
            if let Err(noetl_bus::Error::TooLarge {
                size, max_payload, ..
            }) = answer
            {
                if matches!(report, std::borrow::Cow::Borrowed(_)) {
                    tracing::warn!(
                        size,
                        max_payload,
                        "the result is over NATS max_payload; reporting result_too_large instead"
                    );
                    let mut small = report.into_owned();
                    small.outcome = StepOutcome::too_large(size, max_payload, "NATS max_payload");
                    report = std::borrow::Cow::Owned(small);
                    continue;
                }
            }
            match settle(&answer) {
                Settle::Ack(reply) => {
                    match answer {
                        Ok(ReportAck::Recorded) => tracing::debug!("result recorded"),
                        Ok(ReportAck::Stale) => {
                            tracing::info!("result not recorded: a newer attempt owns the step")
                        }
                        Err(error) => {
                            tracing::error!(%error, "the shard refused the result; dropping it")
                        }
                    }
                    return Some(reply);
                }
                Settle::Retry => {
                    if let Err(error) = answer {
                        tracing::warn!(%error, "result not recorded yet; retrying");
                    }
                    if Instant::now() >= give_up {
                        tracing::error!(
                            deadline = ?self.report_deadline,
                            "the shard did not record the result within report_deadline_ms; \
                             giving up (its lease on the attempt will run out)"
                        );
                        return Some("given_up");
                    }
                    if self.shutdown.is_cancelled() || !backoff.wait(&self.shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Acks without waiting for JetStream to confirm it: a lost ack only means a redelivery,
    /// which the shard answers with `stale` or `stop`, so a confirmation (one more round trip
    /// while the step holds its permit) would buy nothing.
    async fn ack(&self, delivery: &Delivery) {
        if let Err(error) = delivery.ack().await {
            tracing::warn!(%error, "could not ack the command; it will be redelivered");
        }
    }
}

/// What the shard's answer to a report means for the command.
#[derive(Debug, PartialEq, Eq)]
enum Settle {
    /// Settled: ack the command; the label names the answer in metrics.
    Ack(&'static str),
    /// Not settled: send the report again.
    Retry,
}

fn settle(answer: &Result<ReportAck, noetl_bus::Error>) -> Settle {
    match answer {
        Ok(ReportAck::Recorded) => Settle::Ack("recorded"),
        Ok(ReportAck::Stale) => Settle::Ack("stale"),
        // The shard understood the request and will never record it: no such execution,
        // or a report it cannot read. Retrying cannot help; the lease re-dispatches the step.
        Err(noetl_bus::Error::Remote(error))
            if matches!(
                error.code,
                WireErrorCode::NotFound | WireErrorCode::BadRequest | WireErrorCode::TooLarge
            ) =>
        {
            Settle::Ack("rejected")
        }
        // Even the small failure that replaced a result is over max_payload: it never fits.
        Err(noetl_bus::Error::TooLarge { .. }) => Settle::Ack("too_large"),
        Err(_) => Settle::Retry,
    }
}

/// How often a running step proves it is alive: well within both the shard's lease and
/// JetStream's ack deadline.
fn beat_interval(lease_ms: u64, ack_wait: Duration) -> Duration {
    (Duration::from_millis(lease_ms).min(ack_wait) / 3).max(MIN_BEAT)
}

fn count_step(pool: &str, action: &'static str, outcome: &'static str) {
    metrics::counter!(
        "noetl_worker_steps_total",
        "pool" => pool.to_owned(),
        "action" => action,
        "outcome" => outcome
    )
    .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use noetl_contract::message::WireError;

    fn remote(code: WireErrorCode) -> Result<ReportAck, noetl_bus::Error> {
        Err(noetl_bus::Error::Remote(WireError {
            code,
            message: "x".into(),
        }))
    }

    #[test]
    fn recorded_and_stale_reports_settle_the_command() {
        assert_eq!(settle(&Ok(ReportAck::Recorded)), Settle::Ack("recorded"));
        assert_eq!(settle(&Ok(ReportAck::Stale)), Settle::Ack("stale"));
    }

    #[test]
    fn a_shard_that_cannot_record_yet_gets_the_report_again() {
        for retry in [
            remote(WireErrorCode::ShardUnavailable),
            remote(WireErrorCode::Overloaded),
            remote(WireErrorCode::Misrouted),
            Err(noetl_bus::Error::TimedOut {
                subject: "s".into(),
                timeout: Duration::from_secs(1),
            }),
            Err(noetl_bus::Error::NoResponders {
                subject: "s".into(),
            }),
        ] {
            assert_eq!(settle(&retry), Settle::Retry, "{retry:?}");
        }
    }

    #[test]
    fn a_report_the_shard_can_never_record_is_dropped() {
        assert_eq!(
            settle(&remote(WireErrorCode::NotFound)),
            Settle::Ack("rejected")
        );
        assert_eq!(
            settle(&remote(WireErrorCode::BadRequest)),
            Settle::Ack("rejected")
        );
    }

    #[test]
    fn heartbeats_come_well_within_lease_and_ack_deadline() {
        let ack_wait = Duration::from_secs(30);
        assert_eq!(beat_interval(9_000, ack_wait), Duration::from_secs(3));
        assert_eq!(beat_interval(600_000, ack_wait), Duration::from_secs(10));
        assert_eq!(beat_interval(0, ack_wait), MIN_BEAT);
    }
}
