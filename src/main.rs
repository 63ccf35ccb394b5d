//! `vscode-on-demand`: `serve` runs the server; the other subcommands are its client.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{CommandFactory, Parser};
use vscode_on_demand::app::App;
use vscode_on_demand::config::{Cli, Command, LogFormat};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // With one core to run on (an affinity mask or a CPU limit), the multi-threaded
    // scheduler only adds cross-thread wake-ups and atomics to every hand-off between a
    // client connection and its upstream connection; the single-threaded one runs the same
    // tasks on this thread.
    let one_core = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_core {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Serve(cfg) => serve(*cfg).await,
            Command::Cert { dir, hosts } => {
                let (paths, generated) = vscode_on_demand::tls::certs::ensure(&dir, &hosts)?;
                let verb = if generated {
                    "generated"
                } else {
                    "kept existing"
                };
                println!(
                    "{verb} {} and {}",
                    paths.server_cert.display(),
                    paths.ca_cert.display()
                );
                Ok(())
            }
            Command::Completions { shell } => {
                let mut cmd = Cli::command();
                clap_complete::generate(
                    shell,
                    &mut cmd,
                    "vscode-on-demand",
                    &mut std::io::stdout(),
                );
                Ok(())
            }
            Command::InstallCli {
                version,
                dest,
                download_url,
            } => {
                let path =
                    vscode_on_demand::cli::install_cli(&download_url, &version, &dest).await?;
                println!("{}", path.display());
                Ok(())
            }
            other => vscode_on_demand::cli::run(other)
                .await
                .map_err(anyhow::Error::from),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `VOD_LOG`: text for people, or one JSON object per line for
/// collectors (`--log-format json`).
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VOD_LOG")
        // rustls warns about what clients send (an IP address as SNI, as wrk and some
        // libraries do): once per handshake, so a client could flood the log.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        // Colours only for a person watching: log files and collectors get plain text.
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

async fn serve(cfg: vscode_on_demand::config::ServeConfig) -> anyhow::Result<()> {
    init_logs(cfg.log_format);
    let app = App::build(cfg).await.context("starting vscode-on-demand")?;
    // The banner is for whoever started the server: with stdout closed (`serve | head -1`,
    // a detached service) writing it fails, which must not stop the server.
    if let Err(e) = std::io::Write::write_all(&mut std::io::stdout(), banner(&app.info).as_bytes())
    {
        tracing::warn!(error = %e, "could not print the start-up banner to stdout");
    }
    let shutdown = app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: draining connections and stopping instances");
        shutdown.cancel();
    });
    app.run().await;
    Ok(())
}

/// What the server prints once it is serving: where, how to trust it, and the API token if it
/// was just generated.
fn banner(i: &vscode_on_demand::app::ServerInfo) -> String {
    use std::fmt::Write;
    let mut b = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        b,
        "vscode-on-demand is serving {} (listening on {})",
        i.public_url, i.addr
    );
    let _ = writeln!(b, "  API:        {}/api/", i.public_url);
    let _ = match i.metrics_addr {
        Some(a) => writeln!(b, "  Metrics:    http://{a}/metrics (plain HTTP, no token)"),
        None => writeln!(b, "  Metrics:    {}/metrics (admin token)", i.public_url),
    };
    if i.host_routing {
        let _ = writeln!(
            b,
            "  Routing:    host (each instance on its own origin, https://<id>.<host>)"
        );
    } else {
        let _ = writeln!(
            b,
            "  Routing:    path (all instances share one origin: only for users who trust each \
             other; see --routing)"
        );
    }
    let _ = writeln!(
        b,
        "  CA cert:    {}  (trust it in your browser, or: curl --cacert {})",
        i.ca_cert.display(),
        i.ca_cert.display()
    );
    // Shown once, when generated: after that it would only land in logs and journals.
    let _ = match &i.token_file {
        Some(f) if i.token_generated => writeln!(
            b,
            "  API token:  {}  (generated; saved in {})",
            i.admin_token,
            f.display()
        ),
        Some(f) => writeln!(b, "  API token:  in {}", f.display()),
        None => writeln!(b, "  API token:  from VOD_ADMIN_TOKEN / --admin-token"),
    };
    let _ = writeln!(
        b,
        "  Data:       {} ({} instances)",
        i.data_dir.display(),
        i.instances
    );
    if let Some(s) = &i.sandbox {
        let _ = writeln!(b, "  Sandbox:    {s}");
    }
    let _ = writeln!(b, "  Try:        vscode-on-demand create --user-id alice");
    b
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
