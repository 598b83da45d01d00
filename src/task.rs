//! Task and client commands over the NATS request API.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use btp_common::api::{
    verbs, ClientInfo, ClientList, ClientRef, CreateTask, Empty, FileList, FilesCursor,
    FilesRequest, Health, ListTasks, Report, ReportRequest, SetTask, TaskInfo, TaskList,
    TaskOptions, TaskRef, TaskState,
};
use btp_common::units::parse_size;
use btp_nats::ApiClient;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::output;
use crate::{ClientCommand, IdArgs, Output, OutputOpts, TaskCommand};

#[derive(Args, Clone)]
pub struct CreateArgs {
    /// Source (fs:///path or an absolute or relative path).
    #[arg(long)]
    pub src: String,
    /// Destination (fs:///path or an absolute or relative path).
    #[arg(long)]
    pub dst: String,
    /// Start the task right away.
    #[arg(long)]
    pub start: bool,
    #[command(flatten)]
    pub endpoints: EndpointOpts,
    #[command(flatten)]
    pub plan: PlanOpts,
    #[command(flatten)]
    pub output: OutputOpts,
}

/// Options of the endpoints: `--src-opt endpoint=http://... --src-opt region=...` (S3).
#[derive(Args, Clone, Default)]
pub struct EndpointOpts {
    /// An option of the source endpoint, KEY=VALUE (S3: endpoint, region, access_key_id,
    /// secret_access_key, session_token, virtual_host; WebDAV: username, password; SFTP: key,
    /// known_hosts_strategy); repeatable.
    /// KEY=@FILE takes the value from a file, KEY=env:NAME from the environment (keeps secrets
    /// out of `ps`).
    #[arg(long = "src-opt", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub src_opts: Vec<(String, String)>,
    /// An option of the destination endpoint, KEY=VALUE, KEY=@FILE or KEY=env:NAME; repeatable.
    #[arg(long = "dst-opt", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub dst_opts: Vec<(String, String)>,
    /// Copy exactly the files this manifest names instead of listing the source: one path per
    /// line (relative to the source), or CSV with a header whose first column is `path` (and
    /// an optional `size`). A path or any endpoint URL (s3://bucket/manifest.csv). Not with
    /// `--mode sync`.
    #[arg(long, value_name = "FILE")]
    pub files_from: Option<String>,
    /// An option of the manifest's endpoint, KEY=VALUE, KEY=@FILE or KEY=env:NAME (as
    /// --src-opt); repeatable.
    #[arg(long = "files-from-opt", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub files_from_opts: Vec<(String, String)>,
    /// When the task ends, write its report under this endpoint (a path or any URL `--dst`
    /// takes, e.g. s3://audit/btp/): `<task id>/summary.json` and the per-file report
    /// `<task id>/files-00001.jsonl`... (JSON Lines, parts of at most 100,000 lines or 64 MiB).
    #[arg(long, value_name = "URL")]
    pub report_to: Option<String>,
    /// An option of the report's endpoint, KEY=VALUE, KEY=@FILE or KEY=env:NAME (as
    /// --dst-opt); repeatable.
    #[arg(long = "report-to-opt", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub report_to_opts: Vec<(String, String)>,
    /// Which entries the exported per-file report holds: `all`, or `errors` (those neither
    /// copied nor skipped). Default all.
    #[arg(long, value_parser = ["errors", "all"])]
    pub report_level: Option<String>,
    /// When the task ends, POST its summary (JSON) to this http or https URL; retried with
    /// backoff on errors and 5xx answers (8 attempts over about two minutes).
    #[arg(long, value_name = "URL")]
    pub notify: Option<String>,
}

pub(crate) fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| {
        format!(
            "expected KEY=VALUE, got '{}'",
            s.split('=').next().unwrap_or("")
        )
    })?;
    Ok((k.trim().to_string(), v.to_string()))
}

/// The options as sent: a value `@/path/to/file` is the file's content (a trailing newline
/// trimmed), `env:NAME` the environment variable's, so secrets stay out of `ps`. Errors name the
/// flag and the option, never a value.
pub(crate) fn resolve_opts(
    flag: &str,
    opts: &[(String, String)],
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in opts {
        let value = if let Some(path) = v.strip_prefix('@') {
            let mut text = std::fs::read_to_string(path)
                .map_err(|e| anyhow!("{flag} {k}=@{path}: cannot read the file: {e}"))?;
            if text.ends_with('\n') {
                text.pop();
                if text.ends_with('\r') {
                    text.pop();
                }
            }
            text
        } else if let Some(name) = v.strip_prefix("env:") {
            std::env::var(name).map_err(|e| match e {
                std::env::VarError::NotPresent => {
                    anyhow!("{flag} {k}=env:{name}: the environment variable {name} is not set")
                }
                std::env::VarError::NotUnicode(_) => {
                    anyhow!("{flag} {k}=env:{name}: the environment variable {name} is not UTF-8")
                }
            })?
        } else {
            v.clone()
        };
        out.insert(k.clone(), value);
    }
    Ok(out)
}

/// How the task is split into jobs.
#[derive(Args, Clone)]
pub struct PlanOpts {
    /// Most files in one copy job.
    #[arg(long, default_value_t = TaskOptions::default().batch_files)]
    pub batch_files: u32,
    /// Most bytes in one copy job (a larger file gets a job of its own), e.g. 64MiB.
    #[arg(long, default_value = "64MiB")]
    pub batch_bytes: String,
    /// Most entries in one listing page.
    #[arg(long, default_value_t = TaskOptions::default().list_page_entries)]
    pub list_page_entries: u32,
    /// Attempts per file before a transient error counts as a failure.
    #[arg(long, default_value_t = TaskOptions::default().max_attempts)]
    pub max_attempts: u32,
    /// Skip files already at the destination with the same size and a modification time not
    /// older than the source's (`size-mtime`), with the same size and content hash
    /// (`checksum`), or copy everything (`none`).
    #[arg(long, default_value = "size-mtime", value_parser = ["size-mtime", "checksum", "none"])]
    pub compare: String,
    /// Speed limit for the whole task over all clients, e.g. 50MiB/s, or a timetable of
    /// `[DAY-]HH:MM[:SS],RATE|off` entries in UTC, e.g. '08:00,20MiB/s 18:00,off'.
    #[arg(long, value_parser = btp_common::api::SpeedLimit::parse)]
    pub speed_limit: Option<btp_common::api::SpeedLimit>,
    /// Files of at least this size are copied in parts, in parallel on all workers, e.g. 64MiB.
    /// Between two file systems the default (64MiB) means 1GiB: below that one kernel copy of
    /// the whole file is faster; any other value applies as given.
    #[arg(long, default_value = "64MiB")]
    pub multipart_threshold: String,
    /// Size of those parts (raised for huge files: no file needs more than 9,000 parts).
    #[arg(long, default_value = "32MiB")]
    pub part_size: String,
    /// Verify each copy by its size, or also by its content hash (MD5).
    #[arg(long, default_value = "size", value_parser = ["size", "checksum"])]
    pub verify: String,
    /// `copy` leaves destination files the source lacks; `sync` deletes them; `check` copies
    /// nothing and keeps a verdict per path (same, differs, missing, extra, error), comparing
    /// contents too with `--compare checksum` (see `btp check`).
    #[arg(long, default_value = "copy", value_parser = ["copy", "sync", "check"])]
    pub mode: String,
    /// With `--mode check`: only check that the source's files are at the destination (no
    /// `extra` verdicts).
    #[arg(long)]
    pub one_way: bool,
    /// Only report what would be copied and deleted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Copy only files matching this glob (`*.csv`, `logs/**`); repeatable.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave out files matching this glob; repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Leave out files smaller than this, e.g. 1KiB.
    #[arg(long)]
    pub min_size: Option<String>,
    /// Leave out files larger than this, e.g. 10GiB.
    #[arg(long)]
    pub max_size: Option<String>,
    /// Symbolic links: `copy` keeps them as links where the destination can hold them (file
    /// systems) and reports them skipped elsewhere; `follow` copies what they point to (a loop
    /// is a failure); `skip` reports them skipped.
    #[arg(long, default_value = "copy", value_parser = ["copy", "follow", "skip"])]
    pub links: String,
    /// With `--mode sync`: also delete destination files the filters leave out.
    #[arg(long)]
    pub delete_excluded: bool,
    /// Between two endpoints of one S3 service (same endpoint, region and credentials):
    /// `auto` has the service copy the objects (CopyObject, UploadPartCopy; no byte through a
    /// client), `off` copies them through the clients.
    #[arg(long, default_value = "auto", value_parser = ["auto", "off"])]
    pub server_side_copy: String,
    /// Metadata to keep beyond mode and modification time (always kept on file systems):
    /// `owner` gives file-system copies the source's owner and group (the client must run as
    /// root; where it cannot, or the destination has no owners, the per-file report says so).
    #[arg(long, value_parser = ["owner"])]
    pub preserve: Vec<String>,
}

/// The request of `btp check`: a check task, started at once.
pub fn check_request(a: &crate::CheckArgs) -> anyhow::Result<CreateTask> {
    let size_opt = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<u64>> {
        v.as_deref()
            .map(|v| parse_size(v).map_err(|e| anyhow!("{flag}: {e}")))
            .transpose()
    };
    let filter = btp_common::filter::Filter {
        include: a.include.clone(),
        exclude: a.exclude.clone(),
        min_size: size_opt("--min-size", &a.min_size)?,
        max_size: size_opt("--max-size", &a.max_size)?,
    };
    let (report_to, report_to_options, report_level, notify) = deliveries(&a.endpoints)?;
    Ok(CreateTask {
        src: endpoint_arg(&a.src)?,
        dst: endpoint_arg(&a.dst)?,
        src_options: resolve_opts("--src-opt", &a.endpoints.src_opts)?,
        dst_options: resolve_opts("--dst-opt", &a.endpoints.dst_opts)?,
        options: TaskOptions {
            batch_files: a.batch_files,
            list_page_entries: a.list_page_entries,
            speed_limit: a.speed_limit.clone(),
            compare: if a.checksum {
                btp_common::api::Compare::Checksum
            } else {
                btp_common::api::Compare::SizeMtime
            },
            mode: btp_common::api::Mode::Check,
            filter,
            links: btp_common::api::Links::parse(&a.links).unwrap_or_default(),
            one_way: a.one_way,
            ..TaskOptions::default()
        },
        start: true,
        files_from: a
            .endpoints
            .files_from
            .as_deref()
            .map(endpoint_arg)
            .transpose()?,
        files_from_options: resolve_opts("--files-from-opt", &a.endpoints.files_from_opts)?,
        report_to,
        report_to_options,
        report_level,
        notify,
    })
}

/// Turns a local path argument into an absolute one; URLs are passed on as they are.
fn endpoint_arg(s: &str) -> anyhow::Result<String> {
    if s.contains("://") || s.starts_with('/') || s.is_empty() {
        return Ok(s.to_string());
    }
    if let Some((scheme, _)) = s.split_once(':') {
        if !scheme.contains('/') && !scheme.is_empty() {
            return Ok(s.to_string()); // let the server name the unknown scheme
        }
    }
    Ok(std::path::absolute(s)?.to_string_lossy().into_owned())
}

pub fn create_request(
    src: &str,
    dst: &str,
    endpoints: &EndpointOpts,
    plan: &PlanOpts,
    start: bool,
) -> anyhow::Result<CreateTask> {
    let batch_bytes = parse_size(&plan.batch_bytes).map_err(|e| anyhow!("--batch-bytes: {e}"))?;
    let multipart_threshold =
        parse_size(&plan.multipart_threshold).map_err(|e| anyhow!("--multipart-threshold: {e}"))?;
    let part_size = parse_size(&plan.part_size).map_err(|e| anyhow!("--part-size: {e}"))?;
    let size_opt = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<u64>> {
        v.as_deref()
            .map(|v| parse_size(v).map_err(|e| anyhow!("{flag}: {e}")))
            .transpose()
    };
    let filter = btp_common::filter::Filter {
        include: plan.include.clone(),
        exclude: plan.exclude.clone(),
        min_size: size_opt("--min-size", &plan.min_size)?,
        max_size: size_opt("--max-size", &plan.max_size)?,
    };
    let (report_to, report_to_options, report_level, notify) = deliveries(endpoints)?;
    Ok(CreateTask {
        src: endpoint_arg(src)?,
        dst: endpoint_arg(dst)?,
        src_options: resolve_opts("--src-opt", &endpoints.src_opts)?,
        dst_options: resolve_opts("--dst-opt", &endpoints.dst_opts)?,
        options: TaskOptions {
            batch_files: plan.batch_files,
            batch_bytes,
            list_page_entries: plan.list_page_entries,
            max_attempts: plan.max_attempts,
            speed_limit: plan.speed_limit.clone(),
            compare: btp_common::api::Compare::parse(&plan.compare).unwrap_or_default(),
            multipart_threshold,
            part_size,
            verify: btp_common::api::Verify::parse(&plan.verify).unwrap_or_default(),
            mode: btp_common::api::Mode::parse(&plan.mode).unwrap_or_default(),
            dry_run: plan.dry_run,
            filter,
            links: btp_common::api::Links::parse(&plan.links).unwrap_or_default(),
            delete_excluded: plan.delete_excluded,
            server_side_copy: btp_common::api::ServerSideCopy::parse(&plan.server_side_copy)
                .unwrap_or_default(),
            preserve: plan
                .preserve
                .iter()
                .filter_map(|p| btp_common::api::Preserve::parse(p))
                .collect(),
            one_way: plan.one_way,
            ..TaskOptions::default()
        },
        start,
        files_from: endpoints
            .files_from
            .as_deref()
            .map(endpoint_arg)
            .transpose()?,
        files_from_options: resolve_opts("--files-from-opt", &endpoints.files_from_opts)?,
        report_to,
        report_to_options,
        report_level,
        notify,
    })
}

/// Where the report and the notification of a task go: `--report-to` (absolute), its options,
/// `--report-level`, `--notify`.
#[allow(clippy::type_complexity)]
fn deliveries(
    endpoints: &EndpointOpts,
) -> anyhow::Result<(
    Option<String>,
    std::collections::BTreeMap<String, String>,
    Option<btp_common::api::ReportLevel>,
    Option<String>,
)> {
    Ok((
        endpoints
            .report_to
            .as_deref()
            .map(endpoint_arg)
            .transpose()?,
        resolve_opts("--report-to-opt", &endpoints.report_to_opts)?,
        endpoints
            .report_level
            .as_deref()
            .and_then(btp_common::api::ReportLevel::parse),
        endpoints.notify.clone(),
    ))
}

pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
    api: &ApiClient,
    verb: &str,
    req: &Req,
) -> anyhow::Result<Resp> {
    api.call(verb, req).await.map_err(|e| anyhow!(e))
}

/// Prints as JSON or with the human printer (`csv` falls back to it where no CSV form exists).
pub(crate) fn print<T: Serialize>(out: Output, v: &T, table: impl FnOnce(&T)) {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(v).expect("serializable")),
        Output::Table | Output::Csv => table(v),
    }
}

pub async fn dispatch(url: &str, cmd: TaskCommand) -> anyhow::Result<ExitCode> {
    let api = ApiClient::connect(url).await?;
    match cmd {
        TaskCommand::Create(a) => {
            let req = create_request(&a.src, &a.dst, &a.endpoints, &a.plan, a.start)?;
            let t: TaskInfo = call(&api, verbs::TASK_CREATE, &req).await?;
            print(a.output.output, &t, output::task);
        }
        TaskCommand::Start(IdArgs { id, output: o }) => {
            let t: TaskInfo = call(&api, verbs::TASK_START, &TaskRef { id }).await?;
            print(o.output, &t, output::task);
        }
        TaskCommand::Get(IdArgs { id, output: o }) => {
            let t: TaskInfo = call(&api, verbs::TASK_GET, &TaskRef { id }).await?;
            print(o.output, &t, output::task);
        }
        TaskCommand::List(a) => {
            let req = ListTasks {
                state: a.state.as_deref().and_then(TaskState::parse),
                limit: a.limit,
                offset: a.offset,
            };
            let l: TaskList = call(&api, verbs::TASK_LIST, &req).await?;
            match a.output.output {
                Output::Csv => output::task_list_csv(&l),
                o => print(o, &l, output::task_list),
            }
        }
        TaskCommand::Set(a) => {
            let req = SetTask {
                id: a.id,
                speed_limit: a.speed_limit.0,
            };
            let t: TaskInfo = call(&api, verbs::TASK_SET, &req).await?;
            print(a.output.output, &t, output::task);
        }
        TaskCommand::Delete(a) => {
            let r: TaskRef = call(&api, verbs::TASK_DELETE, &TaskRef { id: a.id }).await?;
            print(a.output.output, &r, |r| println!("deleted task {}", r.id));
        }
        TaskCommand::Report(a) if a.differences => {
            verdicts(&api, &a.id, true, a.output.output).await?;
        }
        TaskCommand::Report(a) => {
            let req = ReportRequest {
                id: a.id,
                failures_limit: a.limit,
                failures_offset: a.offset,
                after: a.after,
            };
            let r: Report = call(&api, verbs::TASK_REPORT, &req).await?;
            match (a.failed, a.output.output) {
                (true, Output::Csv) => output::failures_csv(&r.failures),
                (true, o) => print(o, &r.failures, |f| output::failures(f)),
                (false, Output::Csv) => output::report_csv(&r),
                (false, o) => print(o, &r, output::report),
            }
        }
        TaskCommand::Files(a) => {
            let t: TaskInfo = call(&api, verbs::TASK_GET, &TaskRef { id: a.id.clone() }).await?;
            if t.check.is_some() {
                verdicts(&api, &a.id, false, a.output.output).await?;
            } else {
                files(&api, a).await?
            }
        }
        TaskCommand::Verify(a) => {
            let req = btp_common::api::VerifyTask {
                id: a.id,
                checksum: a.checksum,
                one_way: a.one_way,
            };
            let t: TaskInfo = call(&api, verbs::TASK_VERIFY, &req).await?;
            print(a.output.output, &t, output::task);
        }
        TaskCommand::Pause(a) => change(&api, verbs::TASK_PAUSE, a).await?,
        TaskCommand::Resume(a) => change(&api, verbs::TASK_RESUME, a).await?,
        TaskCommand::Cancel(a) => change(&api, verbs::TASK_CANCEL, a).await?,
        TaskCommand::Retry(a) => change(&api, verbs::TASK_RETRY, a).await?,
        TaskCommand::Watch(IdArgs { id, output: o }) => {
            let t = watch(&api, &id).await?;
            let r: Report = call(&api, verbs::TASK_REPORT, &report_req(t.id)).await?;
            print(o.output, &r, output::report);
            return Ok(exit_code(&r.task));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a task's done files page by page, so a task of millions of files needs no more memory
/// than a page.
async fn files(api: &ApiClient, a: IdArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let out = a.output.output;
    if matches!(out, Output::Csv) {
        print!(
            "{}",
            btp_common::csv::line(&["path", "size", "outcome", "reason", "not_kept"])
        );
    }
    let mut after = Some(FilesCursor::Opaque(String::new()));
    loop {
        let req = FilesRequest {
            id: a.id.clone(),
            after,
            limit: 5000,
        };
        let page: FileList = call(api, verbs::TASK_FILES, &req).await?;
        let mut stdout = std::io::stdout().lock();
        for f in &page.files {
            match out {
                Output::Json => writeln!(stdout, "{}", serde_json::to_string(f)?)?,
                Output::Csv => write!(
                    stdout,
                    "{}",
                    btp_common::csv::line(&[
                        f.path.as_str(),
                        &f.size.to_string(),
                        f.outcome.as_str(),
                        &f.reason,
                        &f.not_kept,
                    ])
                )?,
                Output::Table if f.reason.is_empty() && f.not_kept.is_empty() => writeln!(
                    stdout,
                    "{:<8}  {:>14}  {}",
                    f.outcome.as_str(),
                    f.size,
                    f.path
                )?,
                Output::Table if f.reason.is_empty() => writeln!(
                    stdout,
                    "{:<8}  {:>14}  {}  (not kept: {})",
                    f.outcome.as_str(),
                    f.size,
                    f.path,
                    f.not_kept
                )?,
                Output::Table => writeln!(
                    stdout,
                    "{:<8}  {:>14}  {}  ({})",
                    f.outcome.as_str(),
                    f.size,
                    f.path,
                    f.reason
                )?,
            }
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(()),
        }
    }
}

/// Prints a check task's verdicts page by page (`differences`: only those that are not
/// `same`), as a table, CSV (path,size,verdict,what) or one JSON object per line.
pub(crate) async fn verdicts(
    api: &ApiClient,
    id: &str,
    differences: bool,
    out: Output,
) -> anyhow::Result<u64> {
    use std::io::Write;
    if matches!(out, Output::Csv) {
        print!(
            "{}",
            btp_common::csv::line(&["path", "size", "verdict", "what"])
        );
    }
    let (mut after, mut n) = (None, 0u64);
    loop {
        let req = btp_common::api::VerdictsRequest {
            id: id.to_string(),
            after,
            limit: 5000,
            differences,
        };
        let page: btp_common::api::VerdictList = call(api, verbs::TASK_VERDICTS, &req).await?;
        n += page.verdicts.len() as u64;
        match out {
            Output::Table if !page.verdicts.is_empty() => output::verdicts(&page.verdicts),
            Output::Table => {}
            Output::Json | Output::Csv => {
                let mut stdout = std::io::stdout().lock();
                for v in &page.verdicts {
                    if matches!(out, Output::Json) {
                        writeln!(stdout, "{}", serde_json::to_string(v)?)?;
                    } else {
                        write!(
                            stdout,
                            "{}",
                            btp_common::csv::line(&[
                                v.path.as_str(),
                                &v.size.to_string(),
                                v.verdict.as_str(),
                                &v.what,
                            ])
                        )?;
                    }
                }
            }
        }
        match page.next {
            Some(p) => after = Some(p),
            None => return Ok(n),
        }
    }
}

/// Runs a check task to its end and prints its summary and every path that is not the same.
/// Exit code: 0 when every path is the same (`--one-way`: extra paths do not count), 1 when
/// some differ, are missing or extra, 2 when the check could not run or a path could not be
/// compared.
pub async fn check_to_end(url: &str, req: CreateTask, out: Output) -> anyhow::Result<ExitCode> {
    let api = ApiClient::connect(url).await?;
    let t: TaskInfo = call(&api, verbs::TASK_CREATE, &req).await?;
    let t = tokio::select! {
        t = watch(&api, &t.id) => t?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; check {} did not finish", t.id),
    };
    let r: Report = call(&api, verbs::TASK_REPORT, &report_req(t.id.clone())).await?;
    if matches!(out, Output::Json) {
        println!("{}", serde_json::to_string(&r)?);
    }
    verdicts(&api, &t.id, true, out).await?;
    let c = t.check.clone().unwrap_or_default();
    if matches!(out, Output::Table) {
        println!(
            "Check {}: {}",
            t.id,
            output::check_line(&c, t.options.one_way)
        );
        if !r.failures.is_empty() {
            output::failures(&r.failures);
        }
        if !c.contents_compared {
            println!(
                "Contents were not compared (size and modification time only): use --checksum to compare them."
            );
        }
    }
    Ok(if t.state != TaskState::Completed || c.errors > 0 {
        ExitCode::from(2)
    } else if c.clean(t.options.one_way) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A state change (pause, resume, cancel, retry): prints the task as it is afterwards.
async fn change(api: &ApiClient, verb: &str, a: IdArgs) -> anyhow::Result<()> {
    let t: TaskInfo = call(api, verb, &TaskRef { id: a.id }).await?;
    print(a.output.output, &t, output::task);
    Ok(())
}

pub async fn client(url: &str, cmd: ClientCommand) -> anyhow::Result<ExitCode> {
    let api = ApiClient::connect(url).await?;
    match cmd {
        ClientCommand::List(o) => {
            let l: ClientList = call(&api, verbs::CLIENT_LIST, &Empty {}).await?;
            print(o.output, &l, output::client_list);
        }
        ClientCommand::Get(a) => {
            let c: ClientInfo = call(&api, verbs::CLIENT_GET, &ClientRef { id: a.id }).await?;
            print(a.output.output, &c, output::client);
        }
        ClientCommand::Drain(a) => {
            let c: ClientInfo = call(&api, verbs::CLIENT_DRAIN, &ClientRef { id: a.id }).await?;
            print(a.output.output, &c, output::client);
        }
        ClientCommand::Run(_) => unreachable!("dispatched by main"),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn health(url: &str, o: OutputOpts) -> anyhow::Result<ExitCode> {
    let api = ApiClient::connect(url).await?;
    let h: Health = call(&api, verbs::SERVER_HEALTH, &Empty {}).await?;
    print(o.output, &h, |h| {
        output::table(&[
            vec!["Version".into(), h.version.clone()],
            vec!["API".into(), h.api.clone()],
            vec!["Database".into(), h.database.clone()],
            vec!["Leader".into(), h.leader.clone()],
            vec!["Clients online".into(), h.clients_online.to_string()],
            vec!["Tasks running".into(), h.tasks_running.to_string()],
        ])
    });
    Ok(ExitCode::SUCCESS)
}

fn report_req(id: String) -> ReportRequest {
    ReportRequest {
        id,
        failures_limit: 1000,
        failures_offset: 0,
        after: None,
    }
}

/// 0 only when the task completed with every file copied.
fn exit_code(t: &TaskInfo) -> ExitCode {
    if t.state == btp_common::api::TaskState::Completed && t.files_failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Follows a task until it finishes, with a progress bar on a terminal.
pub async fn watch(api: &ApiClient, id: &str) -> anyhow::Result<TaskInfo> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
        )
        .expect("valid template"),
    );
    // Frequent enough that a short copy ends when its task does.
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    loop {
        ticker.tick().await;
        let t: TaskInfo = call(api, verbs::TASK_GET, &TaskRef { id: id.to_string() }).await?;
        bar.set_length(t.bytes_found.max(1));
        bar.set_position(t.bytes_copied + t.bytes_failed + t.bytes_skipped);
        let listing = if t.listing_done { "" } else { " (listing)" };
        bar.set_message(format!(
            "files {}/{}{} ({:.0}/s) failed {}",
            t.files_copied, t.files_found, listing, t.current_files_per_sec, t.files_failed
        ));
        if t.state.is_finished() {
            bar.finish_and_clear();
            return Ok(t);
        }
    }
}

/// Creates and starts a task, follows it, prints the report; the exit code says whether every
/// file was copied.
/// Waits until the task's report export and notification are no longer pending, saying on
/// stderr how each ended.
async fn wait_deliveries(api: &ApiClient, id: &str) -> anyhow::Result<()> {
    loop {
        let t: TaskInfo = call(api, verbs::TASK_GET, &TaskRef { id: id.to_string() }).await?;
        let all = [
            ("report", &t.report_export),
            ("notification", &t.notification),
        ];
        let pending = all.iter().any(|(_, d)| {
            d.as_ref()
                .is_some_and(|d| d.state == btp_common::api::DeliveryState::Pending)
        });
        if !pending {
            for (what, d) in all {
                if let Some(d) = d {
                    match d.state {
                        btp_common::api::DeliveryState::Done => {
                            eprintln!("{what} delivered to {}", d.to)
                        }
                        _ => eprintln!("{what} to {} failed: {}", d.to, d.reason),
                    }
                }
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn run_to_end(url: &str, req: CreateTask, out: Output) -> anyhow::Result<ExitCode> {
    let api = ApiClient::connect(url).await?;
    let t: TaskInfo = call(&api, verbs::TASK_CREATE, &req).await?;
    let delivers = t.report_export.is_some() || t.notification.is_some();
    let t = tokio::select! {
        t = watch(&api, &t.id) => t?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; task {} did not finish", t.id),
    };
    if delivers {
        // The report export and the notification are made by this process's server: it
        // stays until they are done or failed.
        let id = t.id.clone();
        tokio::select! {
            r = wait_deliveries(&api, &id) => r?,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; the report of task {id} was not delivered"),
        }
    }
    let r: Report = call(&api, verbs::TASK_REPORT, &report_req(t.id.clone())).await?;
    print(out, &r, output::report);
    if matches!(out, Output::Table) {
        // Every failed entry is named, page after page, however many there are.
        let mut next = r.next;
        while let Some(after) = next {
            let req = ReportRequest {
                after: Some(after),
                ..report_req(t.id.clone())
            };
            let more: Report = call(&api, verbs::TASK_REPORT, &req).await?;
            if !more.failures.is_empty() {
                output::failures(&more.failures);
            }
            next = more.next;
        }
    }
    Ok(exit_code(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_values_come_from_files_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cr3t\n").unwrap();
        let crlf = dir.path().join("crlf");
        std::fs::write(&crlf, "two\nlines\r\n").unwrap();
        std::env::set_var("BTP_TEST_OPTION_VALUE", "from-env");
        let opts = [
            ("secret_access_key", format!("@{}", file.display())),
            ("password", format!("@{}", crlf.display())),
            ("session_token", "env:BTP_TEST_OPTION_VALUE".to_string()),
            ("region", "eu-west-1".to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v));
        let out = resolve_opts("--dst-opt", &opts).unwrap();
        assert_eq!(out["secret_access_key"], "s3cr3t");
        assert_eq!(out["password"], "two\nlines");
        assert_eq!(out["session_token"], "from-env");
        assert_eq!(out["region"], "eu-west-1");
        let missing = [("password".to_string(), "@/no/such/file".to_string())];
        let e = resolve_opts("--src-opt", &missing).unwrap_err().to_string();
        assert!(
            e.starts_with("--src-opt password=@/no/such/file: cannot read the file"),
            "{e}"
        );
    }
}
