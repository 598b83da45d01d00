//! Schedules: a task template fired by a cron pattern (croner, in an IANA time zone) or a fixed
//! interval. The firing loop runs on the leading server only, like the dispatcher. Each firing
//! is claimed in one transaction that records the run and moves `next_fire_ms` on
//! (compare-and-set on its old value), with the id of the task it will create; the task is then
//! created and started by the same code as `task.create` with `start`. A server stopped between
//! the claim and the task finds the pending run at its next start and creates the task under the
//! claimed id, once. A server stopped across a firing time fires it once, late, when it starts
//! again: missed firings are not made up one by one.

use std::time::Duration;

use btp_common::api::{
    ApiError, CreateSchedule, CreateTask, ErrorCode, ScheduleInfo, ScheduleList, ScheduleRef,
    ScheduleRun, ScheduleRunList, ScheduleRunsRequest, ScheduleState, TaskRef, TaskState,
    DEFAULT_MAX_FAILURES, MAX_PAGE,
};
use btp_common::{now_ms, Endpoint};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::Api;
use crate::store::{run_outcome, RunRow, ScheduleRow};

/// Shortest interval of `every` schedules.
pub const MIN_EVERY_SECS: u64 = 1;
/// Longest interval: a year.
pub const MAX_EVERY_SECS: u64 = 366 * 86_400;
/// Most failed runs in a row a schedule may be allowed.
pub const MAX_FAILURES_LIMIT: u32 = 1000;

/// When a schedule fires.
pub enum When {
    Cron(Box<croner::Cron>, jiff::tz::TimeZone),
    Every(i64),
}

impl When {
    /// Parses a schedule's timing: a cron pattern (in `timezone`) or an interval in seconds.
    pub fn new(cron: &str, every_secs: u64, timezone: &str) -> Result<When, ApiError> {
        let tz = time_zone(timezone)?;
        match (cron.trim(), every_secs) {
            ("", 0) => Err(ApiError::invalid(
                "a schedule needs a cron pattern (--cron) or an interval (--every)",
            )),
            ("", n) => {
                if !(MIN_EVERY_SECS..=MAX_EVERY_SECS).contains(&n) {
                    return Err(ApiError::invalid(format!(
                        "every_secs must be between {MIN_EVERY_SECS} and {MAX_EVERY_SECS} (a year)"
                    )));
                }
                Ok(When::Every(n as i64 * 1000))
            }
            (pattern, 0) => {
                let c: croner::Cron = pattern.parse().map_err(|e: croner::errors::CronError| {
                    ApiError::invalid(format!(
                        "invalid cron pattern '{}': {}",
                        pattern.chars().take(100).collect::<String>(),
                        e.to_string().trim_end_matches('.')
                    ))
                })?;
                let w = When::Cron(Box::new(c), tz);
                // A pattern that never matches (30 February) is refused now, not at its firing.
                w.next_after(now_ms()).map_err(|e| {
                    ApiError::invalid(format!("cron pattern '{pattern}': {}", e.message))
                })?;
                Ok(w)
            }
            _ => Err(ApiError::invalid(
                "a schedule has either a cron pattern or an interval, not both",
            )),
        }
    }

    /// The first firing time strictly after `after_ms`.
    pub fn next_after(&self, after_ms: i64) -> Result<i64, ApiError> {
        match self {
            When::Every(ms) => Ok(after_ms + ms),
            When::Cron(c, tz) => {
                let at = jiff::Timestamp::from_millisecond(after_ms)
                    .map_err(|e| ApiError::internal(format!("time {after_ms}: {e}")))?
                    .to_zoned(tz.clone());
                let next = c.find_next_occurrence(&at, false).map_err(|e| {
                    ApiError::invalid(format!(
                        "no next firing time: {}",
                        e.to_string().trim_end_matches('.')
                    ))
                })?;
                Ok(next.timestamp().as_millisecond())
            }
        }
    }

    /// The firing after the one at `fired_ms`, claimed at `now`: the next one after `now` (an
    /// interval keeps its phase), so firings missed while no server ran are not made up.
    pub fn following(&self, fired_ms: i64, now: i64) -> Result<i64, ApiError> {
        match self {
            When::Every(ms) => {
                let mut next = fired_ms + ms;
                if next <= now {
                    next += (now - next) / ms * ms + ms;
                }
                Ok(next)
            }
            When::Cron(..) => self.next_after(now.max(fired_ms)),
        }
    }
}

/// An IANA time zone by name (`UTC` when empty).
pub fn time_zone(name: &str) -> Result<jiff::tz::TimeZone, ApiError> {
    if name.is_empty() || name == "UTC" {
        return Ok(jiff::tz::TimeZone::UTC);
    }
    jiff::tz::TimeZone::get(name).map_err(|_| {
        ApiError::invalid(format!(
            "unknown time zone '{}': use an IANA name such as Europe/Paris or UTC",
            name.chars().take(60).collect::<String>()
        ))
    })
}

fn when_of(s: &ScheduleRow) -> Result<When, ApiError> {
    When::new(&s.cron, s.every_secs as u64, &s.timezone)
}

fn check_schedule_name(name: &str) -> Result<(), ApiError> {
    btp_common::api::check_tenant_name(name).map_err(|_| {
        ApiError::invalid(format!(
            "invalid schedule name '{}': use 1 to 32 lowercase letters, digits, '-' or '_', starting with a letter",
            name.chars().take(40).collect::<String>()
        ))
    })
}

/// The endpoint of a template as shown: a named endpoint as given, a URL without credentials.
fn shown(given: &str, options: &std::collections::BTreeMap<String, String>) -> String {
    if btp_common::api::named_endpoint(given).is_some() {
        return given.to_string();
    }
    Endpoint::parse_with(given, options)
        .map(|e| e.to_string())
        .unwrap_or_else(|_| given.to_string())
}

impl Api {
    pub(crate) async fn schedule_info(&self, s: ScheduleRow) -> Result<ScheduleInfo, ApiError> {
        let (runs, last_task) = self
            .ctx
            .store
            .schedule_run_summary(&s.tenant, &s.name)
            .await?;
        let t = &s.template;
        Ok(ScheduleInfo {
            src: shown(&t.src, &t.src_options),
            dst: shown(&t.dst, &t.dst_options),
            src_option_keys: t.src_options.keys().cloned().collect(),
            dst_option_keys: t.dst_options.keys().cloned().collect(),
            options: t.options.clone(),
            report_to: t
                .report_to
                .as_deref()
                .map(|r| shown(r, &t.report_to_options)),
            report_level: t
                .report_to
                .as_ref()
                .map(|_| t.report_level.unwrap_or_default()),
            notify: t.notify.as_deref().map(|n| {
                crate::report::parse_notify_url(n)
                    .map(|u| crate::report::shown_url(&u))
                    .unwrap_or_default()
            }),
            cron: (!s.cron.is_empty()).then(|| s.cron.clone()),
            every_secs: (s.every_secs > 0).then_some(s.every_secs as u64),
            timezone: if s.timezone.is_empty() {
                "UTC".to_string()
            } else {
                s.timezone.clone()
            },
            state: ScheduleState::parse(&s.state).unwrap_or(ScheduleState::Paused),
            paused_reason: s.paused_reason,
            max_failures: s.max_failures as u32,
            failures: s.failures as u32,
            next_fire_ms: s.next_fire_ms,
            created_ms: s.created_ms,
            runs: runs as u64,
            last_task,
            name: s.name,
            tenant: s.tenant,
        })
    }

    pub(crate) async fn create_schedule(
        &self,
        req: Result<CreateSchedule, ApiError>,
        tenant: &str,
    ) -> Result<ScheduleInfo, ApiError> {
        let req = req?;
        check_schedule_name(&req.name)?;
        let timezone = req.timezone.clone().unwrap_or_default();
        let cron = req.cron.clone().unwrap_or_default();
        if req.cron.is_some() && cron.trim().is_empty() {
            return Err(ApiError::invalid("invalid cron pattern '': it is empty"));
        }
        if req.every_secs == Some(0) {
            return Err(ApiError::invalid(format!(
                "every_secs must be between {MIN_EVERY_SECS} and {MAX_EVERY_SECS} (a year)"
            )));
        }
        if req.every_secs.is_some() && !timezone.is_empty() && timezone != "UTC" {
            return Err(ApiError::invalid(
                "a time zone applies to cron patterns only, not to an interval",
            ));
        }
        let max_failures = req.max_failures.unwrap_or(DEFAULT_MAX_FAILURES);
        if !(1..=MAX_FAILURES_LIMIT).contains(&max_failures) {
            return Err(ApiError::invalid(format!(
                "max_failures must be between 1 and {MAX_FAILURES_LIMIT}"
            )));
        }
        let when = When::new(&cron, req.every_secs.unwrap_or(0), &timezone)?;
        // The template passes every check of task.create now; it is checked again at each
        // firing (a source may vanish).
        let mut template = req.task;
        template.start = false;
        self.check_task(&template, tenant).await?;
        self.deliveries_of(&template, tenant).await?;
        let now = now_ms();
        let row = ScheduleRow {
            tenant: tenant.to_string(),
            name: req.name,
            cron: cron.trim().to_string(),
            every_secs: req.every_secs.unwrap_or(0) as i64,
            timezone: if timezone == "UTC" {
                String::new()
            } else {
                timezone
            },
            template,
            state: ScheduleState::Active.as_str().to_string(),
            paused_reason: String::new(),
            max_failures: max_failures as i64,
            failures: 0,
            next_fire_ms: when.next_after(now)?,
            created_ms: now,
        };
        self.ctx.store.insert_schedule(&row).await?;
        info!(tenant, schedule = %row.name, cron = %row.cron, every_secs = row.every_secs, "schedule created");
        self.schedule_info(row).await
    }

    pub(crate) async fn list_schedules(
        &self,
        req: Result<btp_common::api::Empty, ApiError>,
        tenant: &str,
    ) -> Result<ScheduleList, ApiError> {
        req?;
        let mut schedules = Vec::new();
        for s in self.ctx.store.schedules(tenant).await? {
            schedules.push(self.schedule_info(s).await?);
        }
        Ok(ScheduleList { schedules })
    }

    pub(crate) async fn get_schedule(
        &self,
        req: Result<ScheduleRef, ApiError>,
        tenant: &str,
    ) -> Result<ScheduleInfo, ApiError> {
        let s = self.ctx.store.schedule(tenant, &req?.name).await?;
        self.schedule_info(s).await
    }

    pub(crate) async fn pause_schedule(
        &self,
        req: Result<ScheduleRef, ApiError>,
        tenant: &str,
    ) -> Result<ScheduleInfo, ApiError> {
        let name = req?.name;
        self.ctx.store.pause_schedule(tenant, &name, "").await?;
        info!(tenant, schedule = %name, "schedule paused");
        self.get_schedule(Ok(ScheduleRef { name }), tenant).await
    }

    /// Activates a schedule: it fires next at its next time from now, and its failures in a
    /// row start over.
    pub(crate) async fn resume_schedule(
        &self,
        req: Result<ScheduleRef, ApiError>,
        tenant: &str,
    ) -> Result<ScheduleInfo, ApiError> {
        let name = req?.name;
        let s = self.ctx.store.schedule(tenant, &name).await?;
        let next = when_of(&s)?.next_after(now_ms())?;
        self.ctx.store.resume_schedule(tenant, &name, next).await?;
        info!(tenant, schedule = %name, "schedule resumed");
        self.get_schedule(Ok(ScheduleRef { name }), tenant).await
    }

    pub(crate) async fn delete_schedule(
        &self,
        req: Result<ScheduleRef, ApiError>,
        tenant: &str,
    ) -> Result<ScheduleRef, ApiError> {
        let name = req?.name;
        self.ctx.store.delete_schedule(tenant, &name).await?;
        info!(tenant, schedule = %name, "schedule deleted");
        Ok(ScheduleRef { name })
    }

    pub(crate) async fn schedule_runs(
        &self,
        req: Result<ScheduleRunsRequest, ApiError>,
        tenant: &str,
    ) -> Result<ScheduleRunList, ApiError> {
        let req = req?;
        if req.limit == 0 || req.limit > MAX_PAGE {
            return Err(ApiError::invalid(format!(
                "limit must be between 1 and {MAX_PAGE}"
            )));
        }
        if req.offset > i64::MAX as u64 {
            return Err(ApiError::invalid("offset is too large"));
        }
        let store = &self.ctx.store;
        store.schedule(tenant, &req.name).await?;
        let rows = store
            .schedule_runs(tenant, &req.name, req.limit as i64, req.offset as i64)
            .await?;
        let now = now_ms();
        let mut runs = Vec::with_capacity(rows.len());
        for r in rows {
            let mut run = ScheduleRun {
                seq: r.seq as u64,
                fire_ms: r.fire_ms,
                at_ms: r.at_ms,
                outcome: r.outcome,
                reason: r.reason,
                task: (!r.task_id.is_empty()).then(|| r.task_id.clone()),
                state: None,
                files_copied: 0,
                bytes_copied: 0,
                files_skipped: 0,
                files_failed: 0,
                duration_ms: 0,
            };
            if !r.task_id.is_empty() {
                match store.task(&r.task_id).await {
                    Ok(t) => {
                        let t = t.info;
                        run.state = Some(t.state);
                        run.files_copied = t.files_copied;
                        run.bytes_copied = t.bytes_copied;
                        run.files_skipped = t.files_skipped;
                        run.files_failed = t.files_failed;
                        run.duration_ms = t
                            .started_ms
                            .map(|s| t.finished_ms.unwrap_or(now) - s)
                            .unwrap_or(0);
                    }
                    Err(e) if e.code == ErrorCode::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            runs.push(run);
        }
        Ok(ScheduleRunList { runs })
    }
}

/// The firing loop (leading server only): once a second, settles the runs whose tasks ended,
/// creates the tasks of claimed runs, and fires the schedules that are due.
pub async fn run(api: Api, cancel: CancellationToken) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Err(e) = tick(&api).await {
            warn!(error = %e.message, "schedules: round failed, trying again");
        }
    }
}

async fn tick(api: &Api) -> Result<(), ApiError> {
    let store = &api.ctx.store;
    // Claimed runs without their task yet (a server stopped in between): create it, once.
    for r in store.runs_in(run_outcome::PENDING).await? {
        if let Err(e) = start_run(api, &r).await {
            warn!(tenant = %r.tenant, schedule = %r.schedule, run = r.seq, error = %e.message, "schedule run not started yet; trying again");
        }
    }
    // Runs whose task ended: their outcome, and the schedule's failures in a row.
    for r in store.runs_in(run_outcome::STARTED).await? {
        let to = match store.task(&r.task_id).await {
            Ok(t) if t.info.state.is_finished() => t.info.state.as_str(),
            Ok(_) => continue,
            Err(e) if e.code == ErrorCode::NotFound => run_outcome::DELETED,
            Err(e) => return Err(e),
        };
        store.settle_run(&r, run_outcome::STARTED, to, "").await?;
        paused_notice(api, &r).await;
    }
    let now = now_ms();
    for s in store.due_schedules(now).await? {
        let when = match when_of(&s) {
            Ok(w) => w,
            Err(e) => {
                // Only a time zone gone from the host's database can do this.
                let reason = format!("its timing cannot be evaluated: {}", e.message);
                warn!(tenant = %s.tenant, schedule = %s.name, %reason, "schedule paused");
                store.pause_schedule(&s.tenant, &s.name, &reason).await?;
                continue;
            }
        };
        let next = when.following(s.next_fire_ms, now)?;
        let (task_id, reason) = match store.run_going(&s.tenant, &s.name).await? {
            Some(prev) => (
                String::new(),
                format!(
                    "the previous run ({}) is still going",
                    if prev.task_id.is_empty() {
                        format!("run {}", prev.seq)
                    } else {
                        format!("task {}", prev.task_id)
                    }
                ),
            ),
            None => (crate::api::new_task_id(), String::new()),
        };
        let Some(seq) = store.claim_firing(&s, next, now, &task_id, &reason).await? else {
            continue; // Paused, deleted or fired meanwhile.
        };
        if task_id.is_empty() {
            info!(tenant = %s.tenant, schedule = %s.name, run = seq, %reason, "schedule run skipped");
            continue;
        }
        info!(tenant = %s.tenant, schedule = %s.name, run = seq, task = %task_id, late_ms = now - s.next_fire_ms, "schedule fired");
        let r = RunRow {
            tenant: s.tenant.clone(),
            schedule: s.name.clone(),
            seq,
            fire_ms: s.next_fire_ms,
            at_ms: now,
            task_id,
            outcome: run_outcome::PENDING.to_string(),
            reason: String::new(),
        };
        if let Err(e) = start_run(api, &r).await {
            warn!(tenant = %r.tenant, schedule = %r.schedule, run = r.seq, error = %e.message, "schedule run not started yet; trying again");
        }
    }
    Ok(())
}

/// Creates and starts the task of a claimed run under its claimed id, as `task.create` with
/// `start` does; a task already there (created before a restart) is started if it is not yet.
/// A refusal (the source is gone, a quota) makes the run an error; a store or NATS outage
/// leaves it pending for the next round.
async fn start_run(api: &Api, r: &RunRow) -> Result<(), ApiError> {
    let store = &api.ctx.store;
    let s = match store.schedule(&r.tenant, &r.schedule).await {
        Ok(s) => s,
        Err(e) if e.code == ErrorCode::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let result = match store.task(&r.task_id).await {
        Ok(t) if t.info.state == TaskState::Created => api
            .start_task(Ok(TaskRef {
                id: r.task_id.clone(),
            }))
            .await
            .map(|_| ()),
        Ok(_) => Ok(()),
        Err(e) if e.code == ErrorCode::NotFound => {
            let template = CreateTask {
                start: true,
                ..s.template.clone()
            };
            api.create_task_as(template, &r.tenant, r.task_id.clone())
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            store
                .settle_run(r, run_outcome::PENDING, run_outcome::STARTED, "")
                .await?;
            Ok(())
        }
        Err(e) if matches!(e.code, ErrorCode::Unavailable | ErrorCode::Internal) => Err(e),
        Err(e) => {
            warn!(tenant = %r.tenant, schedule = %r.schedule, run = r.seq, error = %e.message, "schedule run could not start");
            store
                .settle_run(r, run_outcome::PENDING, run_outcome::ERROR, &e.message)
                .await?;
            paused_notice(api, r).await;
            Ok(())
        }
    }
}

/// Logs a schedule that paused itself after a run.
async fn paused_notice(api: &Api, r: &RunRow) {
    if let Ok(s) = api.ctx.store.schedule(&r.tenant, &r.schedule).await {
        if s.state == ScheduleState::Paused.as_str() && !s.paused_reason.is_empty() {
            warn!(tenant = %r.tenant, schedule = %r.schedule, reason = %s.paused_reason, "schedule paused itself");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_keep_their_phase_and_skip_missed_firings() {
        let w = When::new("", 10, "").unwrap();
        assert_eq!(w.next_after(1_000).unwrap(), 11_000);
        // On time: the next one interval later.
        assert_eq!(w.following(11_000, 11_200).unwrap(), 21_000);
        // Claimed 35 s late: one firing now, the next on the same phase after now.
        assert_eq!(w.following(11_000, 46_000).unwrap(), 51_000);
        assert_eq!(w.following(11_000, 51_000).unwrap(), 61_000);
    }

    #[test]
    fn cron_patterns_follow_their_time_zone() {
        // 2026-01-15T00:00:00Z.
        let t0 = 1_768_435_200_000;
        let utc = When::new("0 2 * * *", 0, "").unwrap();
        assert_eq!(utc.next_after(t0).unwrap(), t0 + 2 * 3_600_000);
        // 02:00 in Paris (UTC+1 in January) is 01:00 UTC.
        let paris = When::new("0 2 * * *", 0, "Europe/Paris").unwrap();
        assert_eq!(paris.next_after(t0).unwrap(), t0 + 3_600_000);
        // Claimed late: the next one after now, not the missed ones.
        assert_eq!(
            utc.following(t0 + 2 * 3_600_000, t0 + 49 * 3_600_000)
                .unwrap(),
            t0 + 50 * 3_600_000
        );
    }

    #[test]
    fn bad_timings_are_refused_with_one_clear_message() {
        let e = When::new("0 2 * *", 0, "").err().unwrap().message;
        assert!(e.starts_with("invalid cron pattern '0 2 * *'"), "{e}");
        let e = When::new("61 * * * *", 0, "").err().unwrap().message;
        assert!(e.starts_with("invalid cron pattern"), "{e}");
        let e = When::new("0 2 * * *", 0, "Mars/Olympus")
            .err()
            .unwrap()
            .message;
        assert!(e.starts_with("unknown time zone 'Mars/Olympus'"), "{e}");
        let e = When::new("0 2 * * *", 10, "").err().unwrap().message;
        assert!(e.contains("not both"), "{e}");
        assert!(When::new("", 0, "").is_err());
    }
}
