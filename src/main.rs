//! `vscode-on-demand`: `serve` runs the server; the other subcommands are its client.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{CommandFactory, Parser};
use vscode_on_demand::app::App;
use vscode_on_demand::config::{Cli, Command};

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

async fn serve(cfg: vscode_on_demand::config::ServeConfig) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VOD_LOG")
                // rustls warns about what clients send (an IP address as SNI, as wrk and
                // some libraries do): once per handshake, so a client could flood the log.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person watching: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let app = App::build(cfg).await.context("starting vscode-on-demand")?;
    let i = &app.info;
    println!(
        "vscode-on-demand is serving {} (listening on {})",
        i.public_url, i.addr
    );
    println!("  API:        {}/api/", i.public_url);
    if i.host_routing {
        println!("  Routing:    host (each instance on its own origin, https://<id>.<host>)");
    } else {
        println!(
            "  Routing:    path (all instances share one origin: only for users who trust each \
             other; see --routing)"
        );
    }
    println!(
        "  CA cert:    {}  (trust it in your browser, or: curl --cacert {})",
        i.ca_cert.display(),
        i.ca_cert.display()
    );
    // Shown once, when generated: after that it would only land in logs and journals.
    match &i.token_file {
        Some(f) if i.token_generated => println!(
            "  API token:  {}  (generated; saved in {})",
            i.admin_token,
            f.display()
        ),
        Some(f) => println!("  API token:  in {}", f.display()),
        None => println!("  API token:  from VOD_ADMIN_TOKEN / --admin-token"),
    }
    println!(
        "  Data:       {} ({} instances)",
        i.data_dir.display(),
        i.instances
    );
    if let Some(s) = &i.sandbox {
        println!("  Sandbox:    {s}");
    }
    println!("  Try:        vscode-on-demand create --user-id alice");
    let shutdown = app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: draining connections and stopping instances");
        shutdown.cancel();
    });
    app.run().await;
    Ok(())
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
