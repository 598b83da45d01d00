//! `btp tenant ...` and `btp token ...`: tenants of a multi-tenant server and their API tokens
//! (admin token only).

use std::process::ExitCode;

use btp_common::api::{
    verbs, CreateTenant, CreateToken, Empty, ListTokens, TenantList, TenantRef, TokenCreated,
    TokenList, TokenRef,
};
use btp_nats::ApiClient;
use clap::{Args, Subcommand};

use crate::output;
use crate::task::{call, print};
use crate::OutputOpts;

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create a tenant (its work queue is created at once), with optional quotas.
    Create(TenantCreateArgs),
    /// List tenants with their token and task counts.
    List(OutputOpts),
    /// Delete a tenant and its tokens (refused while it has running or paused tasks).
    Delete(TenantArgs),
}

#[derive(Args)]
pub struct TenantCreateArgs {
    /// Tenant name: lowercase letters, digits, '-' and '_'.
    pub name: String,
    /// Most tasks running or paused at once; starting one more is refused.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tasks: Option<u32>,
    /// Speed limit shared by all the tenant's running tasks, e.g. 200MiB/s.
    #[arg(long, value_parser = btp_common::units::parse_rate)]
    pub speed_limit: Option<u64>,
    #[command(flatten)]
    pub output: OutputOpts,
}

#[derive(Args)]
pub struct TenantArgs {
    /// Tenant name: lowercase letters, digits, '-' and '_'.
    pub name: String,
    #[command(flatten)]
    pub output: OutputOpts,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create an API token for a tenant; it is printed once and stored only as a hash.
    Create(TokenCreateArgs),
    /// List tokens (ids and labels, never the tokens).
    List(TokenListArgs),
    /// Delete a token: requests with it are refused from then on.
    Delete(TokenIdArgs),
}

#[derive(Args)]
pub struct TokenCreateArgs {
    #[arg(long)]
    pub tenant: String,
    /// What the token is for (shown by `token list`).
    #[arg(long, default_value = "")]
    pub label: String,
    #[command(flatten)]
    pub output: OutputOpts,
}

#[derive(Args)]
pub struct TokenListArgs {
    /// Only this tenant's tokens.
    #[arg(long)]
    pub tenant: Option<String>,
    #[command(flatten)]
    pub output: OutputOpts,
}

#[derive(Args)]
pub struct TokenIdArgs {
    /// Token id (from `token list`).
    pub id: String,
    #[command(flatten)]
    pub output: OutputOpts,
}

pub async fn tenant(url: &str, cmd: TenantCommand) -> anyhow::Result<ExitCode> {
    let api = ApiClient::connect(url).await?;
    match cmd {
        TenantCommand::Create(a) => {
            let req = CreateTenant {
                name: a.name,
                max_running_tasks: a.max_tasks,
                speed_limit: a.speed_limit,
            };
            let t: btp_common::api::TenantInfo = call(&api, verbs::TENANT_CREATE, &req).await?;
            print(a.output.output, &t, |t| {
                println!("created tenant {}", t.name)
            });
        }
        TenantCommand::List(o) => {
            let l: TenantList = call(&api, verbs::TENANT_LIST, &Empty {}).await?;
            print(o.output, &l, |l| {
                let mut rows = vec![["TENANT", "TOKENS", "TASKS", "MAX RUNNING", "SPEED LIMIT"]
                    .map(String::from)
                    .to_vec()];
                rows.extend(l.tenants.iter().map(|t| {
                    vec![
                        t.name.clone(),
                        t.tokens.to_string(),
                        t.tasks.to_string(),
                        t.max_running_tasks.map_or("-".into(), |n| n.to_string()),
                        t.speed_limit.map_or("-".into(), |r| format!("{r} B/s")),
                    ]
                }));
                output::table(&rows);
            });
        }
        TenantCommand::Delete(a) => {
            let r: TenantRef =
                call(&api, verbs::TENANT_DELETE, &TenantRef { name: a.name }).await?;
            print(a.output.output, &r, |r| {
                println!("deleted tenant {}", r.name)
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn token(url: &str, cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    let api = ApiClient::connect(url).await?;
    match cmd {
        TokenCommand::Create(a) => {
            let req = CreateToken {
                tenant: a.tenant,
                label: a.label,
            };
            let t: TokenCreated = call(&api, verbs::TOKEN_CREATE, &req).await?;
            print(a.output.output, &t, |t| {
                println!("{}", t.token);
                eprintln!(
                    "token {} of tenant {}: shown once, keep it (BTP_TOKEN=...)",
                    t.info.id, t.info.tenant
                );
            });
        }
        TokenCommand::List(a) => {
            let l: TokenList =
                call(&api, verbs::TOKEN_LIST, &ListTokens { tenant: a.tenant }).await?;
            print(a.output.output, &l, |l| {
                let mut rows = vec![vec!["ID".into(), "TENANT".into(), "LABEL".into()]];
                rows.extend(
                    l.tokens
                        .iter()
                        .map(|t| vec![t.id.clone(), t.tenant.clone(), t.label.clone()]),
                );
                output::table(&rows);
            });
        }
        TokenCommand::Delete(a) => {
            let r: TokenRef = call(&api, verbs::TOKEN_DELETE, &TokenRef { id: a.id }).await?;
            print(a.output.output, &r, |r| println!("deleted token {}", r.id));
        }
    }
    Ok(ExitCode::SUCCESS)
}
