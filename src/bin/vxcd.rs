//! vxcd, the daemon: `vxcd --config /etc/vxcd/vxcd.toml`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use vxcd::config::Config;
use vxcd::dataplane::Dataplane;
use vxcd::engine::{self, Engine};
use vxcd::server::{self, Control};

#[derive(Parser)]
#[command(
    version,
    about = "Edge-switch agent: service keys and VXCs into kernel state"
)]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = "/etc/vxcd/vxcd.toml")]
    config: PathBuf,
    /// Check the configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// Log at debug level.
    #[arg(long, short)]
    verbose: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    vxcd::logging::init(args.verbose);
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            log::error!("configuration refused: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        return match config.access() {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                log::error!("configuration refused: {}: {e}", args.config.display());
                ExitCode::from(2)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn notify(state: sd_notify::NotifyState) {
    // Outside systemd there is no NOTIFY_SOCKET and this does nothing.
    if let Err(e) = sd_notify::notify(&[state]) {
        log::debug!("sd_notify: {e}");
    }
}

async fn run(config: Config) -> Result<(), String> {
    vxcd::server::raise_fd_limit();
    let access = config.access()?;
    let ports = config.ports();
    let (model, store) = engine::load_state(&config.state.dir, &ports)?;
    log::info!(
        "state loaded from {}: {} keys, {} VXCs",
        config.state.dir.display(),
        model.keys().count(),
        model.vxcs().count()
    );
    let dataplane = Dataplane::connect(config.dataplane())
        .await
        .map_err(|e| format!("opening netlink: {e}"))?;
    let events = dataplane
        .events()
        .await
        .map_err(|e| format!("subscribing to kernel events: {e}"))?;
    let mut engine = Engine::new(model, store, dataplane, &ports, config.reconcile.repair);
    engine.reconcile().await;
    engine.start_inspector(config.inspector());
    let listener = server::bind(&config.control.socket, &access)?;
    let control = Arc::new(Control {
        engine: tokio::sync::Mutex::new(engine),
        access,
    });
    let (stop, stopped) = watch::channel(false);
    let server = tokio::spawn(server::serve(listener, control.clone(), stopped.clone()));
    tokio::spawn(vxcd::reconcile::run(
        control.clone(),
        Duration::from_secs(config.reconcile.interval_s),
        events,
        stopped.clone(),
    ));
    if let Some(period) = sd_notify::watchdog_enabled() {
        let control = control.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period / 2);
            loop {
                tick.tick().await;
                // Ping only when the engine answers: a wedged engine gets the daemon restarted.
                let _alive = control.engine.lock().await;
                notify(sd_notify::NotifyState::Watchdog);
            }
        });
    }
    notify(sd_notify::NotifyState::Ready);
    log::info!("listening on {}", config.control.socket.display());

    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM: finishing the request in flight, then exiting"),
        _ = int.recv() => log::info!("SIGINT: finishing the request in flight, then exiting"),
    }
    notify(sd_notify::NotifyState::Stopping);
    let _ = stop.send(true);
    let _ = server.await;
    // Taking the lock waits for the request in flight; the dataplane stays as it is.
    let engine = control.engine.lock().await;
    drop(engine);
    let _ = std::fs::remove_file(&config.control.socket);
    log::info!("stopped; kernel state left in place");
    Ok(())
}
