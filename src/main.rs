//! The `mailgate` command line: serve, token issue, openapi, check-config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mailgate::auth::{KeySource, TokenKeys, TokenPurpose};
use mailgate::config::Settings;
use mailgate::domain::auth::{Scopes, TenantId};
use mailgate::startup::{Application, Prepared, Stopped};

/// mimalloc instead of the system allocator: sled allocates and frees a node copy per
/// write, and on the store writer thread glibc's malloc was a fifth of the time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mailgate",
    version,
    about = "Transactional email gateway: REST in, authenticated SMTP out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (embedded defaults when no config file is given).
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Tokens for the API.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Print a one-time sign-in link to the web console for a tenant.
    ConsoleLink {
        #[arg(long)]
        tenant: String,
        /// Space-separated scopes the session gets (default: every scope).
        #[arg(long)]
        scope: Option<String>,
        /// How long the link can be used (once), e.g. 15m.
        #[arg(long, default_value = "15m")]
        ttl: String,
        /// Who the session is for (the `sub` claim; an address fills "send a test").
        #[arg(long, default_value = "console")]
        sub: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the OpenAPI document (JSON) to stdout.
    Openapi,
    /// Validate a configuration and exit 0 (valid) or 1 (with the reasons).
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a signed JWT for a tenant and scopes.
    Issue {
        #[arg(long)]
        tenant: String,
        /// Space-separated scopes, e.g. "messages:send messages:read".
        #[arg(long)]
        scope: String,
        /// Lifetime, e.g. 24h, 30d.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// The `sub` claim: who the token is for.
        #[arg(long, default_value = "mailgate-cli")]
        sub: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

const DEV_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

fn load(config: Option<&PathBuf>) -> anyhow::Result<Settings> {
    Settings::load(config.map(PathBuf::as_path), std::env::vars())
}

async fn serve(config: Option<PathBuf>) -> anyhow::Result<()> {
    let settings = load(config.as_ref())?;
    mailgate::telemetry::init(&settings.log);
    let app = Application::build(settings)?;
    if let KeySource::DevKey(path) = &app.tokens().source {
        let tenant = TenantId::parse("default").context("default tenant")?;
        let token = app.tokens().issue(&tenant, &Scopes::all(), DEV_TOKEN_TTL, "dev")?;
        tracing::warn!(key = %path.display(), "no auth secret configured: using the dev key (fine for development, not for production)");
        println!("Dev token (tenant `default`, every scope, valid 30 days):\n{token}");
    }
    match app.run_until_stopped().await? {
        Stopped::Signalled => Ok(()),
        Stopped::ToReopenStore => reexecute(),
    }
}

/// Replaces this process with a fresh start of the same command (same PID, same
/// arguments and environment): how a store that failed to write is reopened.
fn reexecute() -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    // `/proc/self/exe` rather than `current_exe()`: it still opens the running binary
    // after an upgrade replaced the file on disk.
    let err = std::process::Command::new("/proc/self/exe")
        .args(std::env::args_os().skip(1))
        .exec();
    Err(err).context("Failed to restart to reopen the store")
}

fn issue(tenant: &str, scope: &str, ttl: &str, sub: &str, config: Option<&PathBuf>) -> anyhow::Result<()> {
    let settings = load(config)?;
    let tenant = TenantId::parse(tenant).map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
    let scopes = Scopes::parse_strict(scope).map_err(|e| anyhow::anyhow!("--scope: {e}"))?;
    let ttl = humantime::parse_duration(ttl).with_context(|| format!("--ttl: `{ttl}` is not a duration like 24h"))?;
    let token = TokenKeys::load(&settings)?.issue(&tenant, &scopes, ttl, sub)?;
    println!("{token}");
    Ok(())
}

/// A `console-link` token in a URL under `http.public_url`: it signs in once and
/// only at the console (the API refuses it).
fn console_link(
    tenant: &str,
    scope: Option<&str>,
    ttl: &str,
    sub: &str,
    config: Option<&PathBuf>,
) -> anyhow::Result<()> {
    let settings = load(config)?;
    let tenant = TenantId::parse(tenant).map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
    let scopes = match scope {
        Some(scope) => Scopes::parse_strict(scope).map_err(|e| anyhow::anyhow!("--scope: {e}"))?,
        None => Scopes::all(),
    };
    let ttl = humantime::parse_duration(ttl).with_context(|| format!("--ttl: `{ttl}` is not a duration like 15m"))?;
    let token = TokenKeys::load(&settings)?.issue_for(TokenPurpose::ConsoleLink, &tenant, &scopes, ttl, sub)?;
    println!("{}/console/login?link={token}", settings.http.public_base());
    Ok(())
}

fn check_config(config: Option<&PathBuf>) -> anyhow::Result<()> {
    let settings = load(config)?;
    for warning in Prepared::check(&settings)? {
        eprintln!("warning: {warning}");
    }
    println!("configuration is valid");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Serve { config } => serve(config.clone()).await,
        Command::Token {
            command:
                TokenCommand::Issue {
                    tenant,
                    scope,
                    ttl,
                    sub,
                    config,
                },
        } => issue(tenant, scope, ttl, sub, config.as_ref()),
        Command::ConsoleLink {
            tenant,
            scope,
            ttl,
            sub,
            config,
        } => console_link(tenant, scope.as_deref(), ttl, sub, config.as_ref()),
        Command::Openapi => serde_json::to_string_pretty(&mailgate::api::openapi_document())
            .map(|doc| println!("{doc}"))
            .context("Failed to serialize the OpenAPI document"),
        Command::CheckConfig { config } => check_config(config.as_ref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
