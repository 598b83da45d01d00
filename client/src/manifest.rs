//! The List job of a task with a manifest (`--files-from`): reads the manifest as a stream
//! from its endpoint instead of listing the source, looks up each path it names at the source,
//! and sends the same pages a listing sends (files to copy, entries noted with their outcome
//! and reason), so the server plans Copy jobs from them as from any listing.
//!
//! Memory stays bounded whatever the length of the manifest: the manifest is read in chunks,
//! one page of entries is looked up at a time, and a path listed twice is recognized (and
//! counted once, by its first line) among the last entries only
//! ([`btp_common::manifest::Recent`]). Pages are cut by the manifest's
//! entries alone, so a job run again sends the same pages and the server applies each once.

use futures::{StreamExt, TryStreamExt};
use opendal::EntryMode;

use btp_common::manifest::{self, Item, Manifest, Next, Parser, Recent};
use btp_common::wire::{FileEntry, Job, Outcome};

use crate::errors::JobError;
use crate::exec::{JobContext, ListOpts, Page, REASON_MAX};

/// Bytes read from the manifest per request.
const READ_CHUNK: usize = 1 << 20;

/// Lookups made at once on a remote source.
const STATS_AT_ONCE: usize = 32;

/// What a lookup at the source found for one entry.
enum Found {
    File(FileEntry),
    Dir,
    Problem(Outcome, String),
}

pub(crate) async fn list(
    job: &Job,
    m: &Manifest,
    opts: &ListOpts<'_>,
    ctx: &JobContext<'_>,
) -> Result<(), JobError> {
    let unreadable = |e: opendal::Error| {
        let e = JobError::from(e);
        let text = format!("manifest {} cannot be read: {e}", m.url);
        if e.is_transient() {
            JobError::Transient(text)
        } else {
            JobError::Permanent(text)
        }
    };
    // The same checks as a listing's: a missing source root is an error of the whole job.
    let src = job.src.source_operator()?;
    let reader = m
        .endpoint
        .source_operator()
        .map_err(unreadable)?
        .reader_with(&m.name)
        .chunk(READ_CHUNK)
        .await
        .map_err(unreadable)?;
    let mut stream = reader.into_bytes_stream(..).await.map_err(unreadable)?;
    let mut parser = Parser::new();
    let mut recent = Recent::default();
    let (mut seq, mut entries) = (0u32, 0u64);
    let mut batch = Vec::new();
    let mut weight = 0u64;
    loop {
        if ctx.cancel.is_cancelled() {
            return Err(JobError::Cancelled);
        }
        match parser.next_item() {
            Next::NeedInput => match stream.try_next().await.map_err(|e| {
                // A read that fails midway is worth another attempt: pages already applied
                // are not applied again.
                JobError::Transient(format!("manifest {} cannot be read: {e}", m.url))
            })? {
                Some(bytes) => parser.push(&bytes),
                None => parser.finish(),
            },
            Next::Item(item) => {
                weight += item_len(&item) + 48 + REASON_MAX as u64;
                batch.push(item);
                if batch.len() >= opts.page_entries || weight >= opts.page_bytes {
                    entries += batch.len() as u64;
                    let page = page(
                        job,
                        &src,
                        std::mem::take(&mut batch),
                        &mut recent,
                        opts,
                        ctx,
                    )
                    .await?;
                    if let Some(delay) = crate::exec::list_page_delay() {
                        tokio::time::sleep(delay).await;
                    }
                    ctx.sink.send(job, seq, false, page).await?;
                    seq += 1;
                    weight = 0;
                }
            }
            Next::Done => break,
        }
    }
    entries += batch.len() as u64;
    let last = page(job, &src, batch, &mut recent, opts, ctx).await?;
    tracing::debug!(job = %job.id, manifest = %m.url, entries, pages = seq + 1, csv = parser.is_csv(), "manifest read");
    ctx.sink.send(job, seq, true, last).await
}

fn item_len(item: &Item) -> u64 {
    match item {
        Item::Entry { path, .. } => path.len() as u64,
        Item::Bad { shown, .. } => shown.len() as u64,
    }
}

/// The page of one batch of manifest entries: each looked up at the source, in order.
async fn page(
    job: &Job,
    src: &opendal::Operator,
    items: Vec<Item>,
    recent: &mut Recent,
    opts: &ListOpts<'_>,
    ctx: &JobContext<'_>,
) -> Result<btp_common::wire::ResultBody, JobError> {
    let mut page = Page::default();
    // (path, size in the manifest, line) of the entries to look up.
    let mut lookups = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Item::Bad { shown, reason, .. } => {
                page.note(&shown, 0, Outcome::Failed, reason);
            }
            Item::Entry { line, path, size } => {
                // Listed again: counted once, by its first line.
                if !recent.seen(&path) {
                    lookups.push((path, size, line));
                }
            }
        }
    }
    let found = look_up(job, src, &lookups, opts, ctx).await?;
    for ((path, size, _), found) in lookups.iter().zip(found) {
        match found {
            Found::Problem(outcome, reason) => page.note(path, 0, outcome, reason),
            Found::Dir => page.note(
                path,
                0,
                Outcome::Failed,
                "a directory: a manifest names files (list the files in it)".into(),
            ),
            Found::File(f) => match size {
                Some(want) if f.link.is_none() && *want != f.size => page.note(
                    path,
                    f.size,
                    Outcome::Failed,
                    format!("the source has {} bytes, the manifest says {want}", f.size),
                ),
                _ if !opts.filter.accepts(path, f.size) => {
                    page.note(path, f.size, Outcome::Excluded, String::new())
                }
                _ => page.files.push(f),
            },
        }
    }
    Ok(page.take())
}

/// What the source has at each path, in order.
async fn look_up(
    job: &Job,
    src: &opendal::Operator,
    lookups: &[(String, Option<u64>, u64)],
    opts: &ListOpts<'_>,
    ctx: &JobContext<'_>,
) -> Result<Vec<Found>, JobError> {
    if let Some(root) = job.src.local_root() {
        let policy = crate::local::LinkPolicy {
            links: opts.links,
            dst_holds_links: job.dst.is_local(),
            owner: job.preserve_owner,
        };
        let root = std::path::PathBuf::from(root);
        let paths: Vec<(String, u64)> = lookups.iter().map(|(p, _, l)| (p.clone(), *l)).collect();
        return tokio::task::spawn_blocking(move || {
            paths
                .iter()
                .map(|(path, line)| {
                    let listed = crate::local::inspect_named(
                        &root,
                        path,
                        policy,
                        &manifest::not_found(*line),
                    );
                    if let Some((outcome, reason)) = listed.problem {
                        return Found::Problem(outcome, reason);
                    }
                    match listed.mode {
                        EntryMode::DIR => Found::Dir,
                        EntryMode::FILE => {
                            let mut f = FileEntry::new(path.clone(), listed.size, listed.mtime_ms)
                                .with_posix(listed.posix);
                            f.link = listed.link;
                            Found::File(f)
                        }
                        EntryMode::Unknown => {
                            Found::Problem(Outcome::Failed, crate::local::NOT_A_FILE.into())
                        }
                    }
                })
                .collect()
        })
        .await
        .map_err(|e| JobError::Transient(format!("manifest lookups stopped: {e}")));
    }
    let last_attempt = ctx.last_attempt;
    // Owned data in each lookup: the futures hold no borrow across the stream.
    let owned: Vec<(String, u64)> = lookups.iter().map(|(p, _, l)| (p.clone(), *l)).collect();
    let stats = futures::stream::iter(owned)
        .map(|(path, line)| {
            let src = src.clone();
            async move { stat(&src, path, line, last_attempt).await }
        })
        .buffered(STATS_AT_ONCE);
    stats.try_collect().await
}

/// One lookup at a remote source; Err for a transient error worth another attempt of the job.
async fn stat(
    src: &opendal::Operator,
    path: String,
    line: u64,
    last_attempt: bool,
) -> Result<Found, JobError> {
    match src.stat(&path).await {
        Ok(meta) => Ok(match meta.mode() {
            EntryMode::DIR => Found::Dir,
            EntryMode::FILE => Found::File(FileEntry::new(
                path.clone(),
                meta.content_length(),
                crate::exec::mtime_ms(&meta),
            )),
            EntryMode::Unknown => Found::Problem(Outcome::Failed, crate::local::NOT_A_FILE.into()),
        }),
        Err(e) if e.kind() == opendal::ErrorKind::NotFound => {
            Ok(Found::Problem(Outcome::Failed, manifest::not_found(line)))
        }
        Err(e) => match JobError::from(e) {
            // The whole page is looked at again later (the job is retried).
            e if e.is_transient() && !last_attempt => Err(e),
            e => Ok(Found::Problem(
                Outcome::Failed,
                format!("cannot be inspected: {e}"),
            )),
        },
    }
}
