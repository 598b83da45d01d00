//! `btp endpoint ...`: named sources and destinations of the caller's tenant, with their
//! credentials, referenced by tasks as `NAME:/path`. Secrets go in and never come back out.

use std::process::ExitCode;

use btp_common::api::{verbs, CreateEndpoint, Empty, EndpointInfo, EndpointList, EndpointRef};
use btp_nats::ApiClient;
use clap::{Args, Subcommand};

use crate::output;
use crate::task::{call, print};
use crate::OutputOpts;

#[derive(Subcommand)]
pub enum EndpointCommand {
    /// Name an endpoint: `btp endpoint create archive s3://bucket/prefix --opt region=...`;
    /// tasks then use `--src archive:/path`.
    Create(EndpointCreateArgs),
    /// List the endpoints (URLs and which options are set, never their values).
    List(OutputOpts),
    /// Delete an endpoint (tasks created with it keep their copy of it).
    Delete(EndpointNameArgs),
}

#[derive(Args)]
pub struct EndpointCreateArgs {
    /// Name: lowercase letters, digits, '-' and '_'.
    pub name: String,
    /// URL (fs:///path, s3://bucket/prefix, webdav://host/path, sftp://user@host/path) or an
    /// absolute path.
    pub url: String,
    /// An option of the endpoint, KEY=VALUE, KEY=@FILE or KEY=env:NAME (as --src-opt of
    /// `task create`); repeatable.
    #[arg(long = "opt", value_name = "KEY=VALUE", value_parser = crate::task::parse_kv)]
    pub opts: Vec<(String, String)>,
    #[command(flatten)]
    pub output: OutputOpts,
}

#[derive(Args)]
pub struct EndpointNameArgs {
    pub name: String,
    #[command(flatten)]
    pub output: OutputOpts,
}

fn rows(list: &[EndpointInfo]) -> Vec<Vec<String>> {
    let mut rows = vec![["NAME", "URL", "OPTIONS"].map(String::from).to_vec()];
    rows.extend(
        list.iter()
            .map(|e| vec![e.name.clone(), e.url.clone(), e.option_keys.join(",")]),
    );
    rows
}

pub async fn endpoint(url: &str, cmd: EndpointCommand) -> anyhow::Result<ExitCode> {
    let api = ApiClient::connect(url).await?;
    match cmd {
        EndpointCommand::Create(a) => {
            let req = CreateEndpoint {
                name: a.name,
                url: a.url,
                options: crate::task::resolve_opts("--opt", &a.opts)?,
            };
            let e: EndpointInfo = call(&api, verbs::ENDPOINT_CREATE, &req).await?;
            print(a.output.output, &e, |e| {
                output::table(&rows(std::slice::from_ref(e)))
            });
        }
        EndpointCommand::List(o) => {
            let l: EndpointList = call(&api, verbs::ENDPOINT_LIST, &Empty {}).await?;
            print(o.output, &l, |l| output::table(&rows(&l.endpoints)));
        }
        EndpointCommand::Delete(a) => {
            let r: EndpointRef =
                call(&api, verbs::ENDPOINT_DELETE, &EndpointRef { name: a.name }).await?;
            print(a.output.output, &r, |r| {
                println!("deleted endpoint {}", r.name)
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
