//! `btp schedule ...`: recurring tasks, fired by a cron pattern or a fixed interval from the
//! leading server, each run an incremental copy of the template.

use std::process::ExitCode;
use std::time::Duration;

use btp_common::api::{
    verbs, CreateSchedule, Empty, ScheduleInfo, ScheduleList, ScheduleRef, ScheduleRunList,
    ScheduleRunsRequest,
};
use btp_common::units::{Bytes, Millis};
use btp_nats::ApiClient;
use clap::{ArgGroup, Args, Subcommand};

use crate::output;
use crate::task::{call, print, EndpointOpts, PlanOpts};
use crate::OutputOpts;

#[derive(Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule: `--cron '0 2 * * *'` or `--every 6h`, with the source, destination and
    /// task options of `task create`. Each firing creates and starts a task (skipped while the
    /// previous run is still going).
    Create(Box<ScheduleCreateArgs>),
    /// List the schedules.
    List(OutputOpts),
    /// Show a schedule (and why it paused itself, when it did).
    Get(ScheduleNameArgs),
    /// Stop firing a schedule (a running task goes on).
    Pause(ScheduleNameArgs),
    /// Fire a paused schedule again, from its next time on; its failures in a row start over.
    Resume(ScheduleNameArgs),
    /// Delete a schedule and its history (its tasks stay).
    Delete(ScheduleNameArgs),
    /// A schedule's runs, newest first: task, state, files, bytes, duration.
    Runs(ScheduleRunsArgs),
}

#[derive(Args)]
#[command(group(ArgGroup::new("when").required(true).args(["cron", "every"])))]
pub struct ScheduleCreateArgs {
    /// Name: lowercase letters, digits, '-' and '_'.
    pub name: String,
    /// Cron pattern: minute hour day-of-month month day-of-week (a sixth field first for
    /// seconds), in --timezone.
    #[arg(long)]
    pub cron: Option<String>,
    /// Fixed interval, e.g. 6h, 30m; the first run is one interval from now.
    #[arg(long, value_parser = crate::parse_duration)]
    pub every: Option<Duration>,
    /// IANA time zone of the cron pattern, e.g. Europe/Paris (default UTC).
    #[arg(long)]
    pub timezone: Option<String>,
    /// Failed runs in a row after which the schedule pauses itself.
    #[arg(long, default_value_t = btp_common::api::DEFAULT_MAX_FAILURES)]
    pub max_failures: u32,
    /// Source (fs:///path, a path, a URL, or NAME:/path of a named endpoint).
    #[arg(long)]
    pub src: String,
    /// Destination.
    #[arg(long)]
    pub dst: String,
    #[command(flatten)]
    pub endpoints: EndpointOpts,
    #[command(flatten)]
    pub plan: PlanOpts,
    #[command(flatten)]
    pub output: OutputOpts,
}

#[derive(Args)]
pub struct ScheduleNameArgs {
    pub name: String,
    #[command(flatten)]
    pub output: OutputOpts,
}

#[derive(Args)]
pub struct ScheduleRunsArgs {
    pub name: String,
    /// Most runs to show.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Runs to skip (paging).
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
    #[command(flatten)]
    pub output: OutputOpts,
}

/// A UTC time in milliseconds as `2026-12-03T02:00:00Z`.
fn at(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
        .unwrap_or_else(|_| ms.to_string())
}

fn timing(s: &ScheduleInfo) -> String {
    match (&s.cron, s.every_secs) {
        (Some(c), _) => format!("cron '{c}'"),
        (None, Some(n)) => format!(
            "every {}",
            humantime::format_duration(Duration::from_secs(n))
        ),
        _ => String::new(),
    }
}

fn schedule_rows(s: &ScheduleInfo) -> Vec<Vec<String>> {
    let kv = |k: &str, v: String| vec![k.to_string(), v];
    let mut rows = vec![
        kv("Name", s.name.clone()),
        kv("State", s.state.as_str().to_string()),
    ];
    if !s.paused_reason.is_empty() {
        rows.push(kv("Paused because", s.paused_reason.clone()));
    }
    rows.extend([
        kv("Fires", timing(s)),
        kv("Time zone", s.timezone.clone()),
        kv("Next firing", at(s.next_fire_ms)),
        kv("Source", s.src.clone()),
        kv("Destination", s.dst.clone()),
        kv("Runs", s.runs.to_string()),
        kv("Last task", s.last_task.clone().unwrap_or_default()),
        kv(
            "Failures in a row",
            format!("{} (pauses at {})", s.failures, s.max_failures),
        ),
    ]);
    rows
}

fn list_rows(l: &ScheduleList) -> Vec<Vec<String>> {
    let mut rows = vec![[
        "NAME",
        "STATE",
        "FIRES",
        "TZ",
        "NEXT",
        "RUNS",
        "LAST TASK",
        "SOURCE",
        "DESTINATION",
    ]
    .map(String::from)
    .to_vec()];
    rows.extend(l.schedules.iter().map(|s| {
        vec![
            s.name.clone(),
            s.state.as_str().to_string(),
            timing(s),
            s.timezone.clone(),
            at(s.next_fire_ms),
            s.runs.to_string(),
            s.last_task.clone().unwrap_or_default(),
            s.src.clone(),
            s.dst.clone(),
        ]
    }));
    rows
}

fn runs_rows(l: &ScheduleRunList) -> Vec<Vec<String>> {
    let mut rows = vec![[
        "RUN", "FIRED", "TASK", "OUTCOME", "STATE", "FILES", "BYTES", "DURATION", "REASON",
    ]
    .map(String::from)
    .to_vec()];
    rows.extend(l.runs.iter().map(|r| {
        vec![
            r.seq.to_string(),
            at(r.fire_ms),
            r.task.clone().unwrap_or_default(),
            r.outcome.clone(),
            r.state.map(|s| s.as_str().to_string()).unwrap_or_default(),
            r.files_copied.to_string(),
            Bytes(r.bytes_copied).to_string(),
            if r.task.is_some() {
                Millis(r.duration_ms).to_string()
            } else {
                String::new()
            },
            r.reason.clone(),
        ]
    }));
    rows
}

pub async fn schedule(url: &str, cmd: ScheduleCommand) -> anyhow::Result<ExitCode> {
    // Bad arguments are refused before any connection.
    let create = match &cmd {
        ScheduleCommand::Create(a) => {
            let task = crate::task::create_request(&a.src, &a.dst, &a.endpoints, &a.plan, false)?;
            let every_secs = match a.every {
                Some(d) if d.as_secs() == 0 || d.subsec_nanos() != 0 => anyhow::bail!(
                    "--every: '{}' is not a whole number of seconds of at least 1s",
                    humantime::format_duration(d)
                ),
                Some(d) => Some(d.as_secs()),
                None => None,
            };
            Some(CreateSchedule {
                name: a.name.clone(),
                cron: a.cron.clone(),
                every_secs,
                timezone: a.timezone.clone(),
                max_failures: Some(a.max_failures),
                task,
            })
        }
        _ => None,
    };
    let api = ApiClient::connect(url).await?;
    match cmd {
        ScheduleCommand::Create(a) => {
            let req = create.expect("built above");
            let s: ScheduleInfo = call(&api, verbs::SCHEDULE_CREATE, &req).await?;
            print(a.output.output, &s, |s| output::table(&schedule_rows(s)));
        }
        ScheduleCommand::List(o) => {
            let l: ScheduleList = call(&api, verbs::SCHEDULE_LIST, &Empty {}).await?;
            print(o.output, &l, |l| output::table(&list_rows(l)));
        }
        ScheduleCommand::Get(a) => named(&api, verbs::SCHEDULE_GET, a).await?,
        ScheduleCommand::Pause(a) => named(&api, verbs::SCHEDULE_PAUSE, a).await?,
        ScheduleCommand::Resume(a) => named(&api, verbs::SCHEDULE_RESUME, a).await?,
        ScheduleCommand::Delete(a) => {
            let r: ScheduleRef =
                call(&api, verbs::SCHEDULE_DELETE, &ScheduleRef { name: a.name }).await?;
            print(a.output.output, &r, |r| {
                println!("deleted schedule {}", r.name)
            });
        }
        ScheduleCommand::Runs(a) => {
            let req = ScheduleRunsRequest {
                name: a.name,
                limit: a.limit,
                offset: a.offset,
            };
            let l: ScheduleRunList = call(&api, verbs::SCHEDULE_RUNS, &req).await?;
            print(a.output.output, &l, |l| output::table(&runs_rows(l)));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn named(api: &ApiClient, verb: &str, a: ScheduleNameArgs) -> anyhow::Result<()> {
    let s: ScheduleInfo = call(api, verb, &ScheduleRef { name: a.name }).await?;
    print(a.output.output, &s, |s| output::table(&schedule_rows(s)));
    Ok(())
}
