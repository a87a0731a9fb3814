//! vxcd, the daemon: `vxcd --config /etc/vxcd/vxcd.toml`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use vxcd::cli::vxcd_args::Args;
use vxcd::config::Config;
use vxcd::dataplane::Dataplane;
use vxcd::engine::{self, Engine};
use vxcd::server::{self, Control};

fn main() -> ExitCode {
    let args = Args::parse();
    if args.check_config {
        return check_config(&args.config);
    }
    vxcd::logging::init(args.verbose);
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            log::error!("configuration refused: {e}");
            return ExitCode::from(2);
        }
    };
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
    match runtime.block_on(run(config, args.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `--check-config` (the unit's ExecStartPre): parses and validates the file, resolves the socket's
/// group and the writers, and says what it found on stdout or why it is refused on stderr; exit
/// 0 or 1. Touches neither the kernel, the state nor the socket, and needs no privilege beyond
/// reading the file.
fn check_config(path: &std::path::Path) -> ExitCode {
    let checked = Config::load(path)
        .map_err(|e| e.to_string())
        .and_then(|config| {
            let access = config
                .access()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok((config, access))
        });
    match checked {
        Ok((config, access)) => {
            let ports: Vec<String> = config
                .ports()
                .iter()
                .map(|p| format!("{} on {}", p.name, p.interface))
                .collect();
            println!(
                "{}: configuration OK: {} ports ({}); socket {} (mode {:04o}{}); {} writers \
                 besides root; state in {}",
                path.display(),
                ports.len(),
                ports.join(", "),
                config.control.socket.display(),
                access.mode,
                config.control.group.as_ref().zip(access.gid).map_or(
                    String::new(),
                    |(name, gid)| format!(", group {} ({gid})", name.get_ref())
                ),
                access.writer_uids.len(),
                config.state.dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vxcd: configuration refused: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Signals whose default action would end the daemon without removing its socket. Each of the
/// stopping ones ends it cleanly, as SIGTERM does; the others are logged and ignored.
const STOP_SIGNALS: &[(&str, i32)] = &[
    ("SIGTERM", libc::SIGTERM),
    ("SIGINT", libc::SIGINT),
    ("SIGQUIT", libc::SIGQUIT),
    ("SIGALRM", libc::SIGALRM),
    ("SIGVTALRM", libc::SIGVTALRM),
    ("SIGPROF", libc::SIGPROF),
    ("SIGIO", libc::SIGIO),
    ("SIGPWR", libc::SIGPWR),
    ("SIGXCPU", libc::SIGXCPU),
    ("SIGXFSZ", libc::SIGXFSZ),
];
/// SIGHUP (`systemctl reload`) re-reads the config.
const RELOAD_SIGNAL: (&str, i32) = ("SIGHUP", libc::SIGHUP);
const IGNORED_SIGNALS: &[(&str, i32, &str)] = &[
    ("SIGUSR1", libc::SIGUSR1, "ignored"),
    ("SIGUSR2", libc::SIGUSR2, "ignored"),
];

/// What a caught signal asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Stop,
    Reload,
    /// Logged (with what is said) and ignored.
    Ignore(&'static str),
}

/// A caught signal: its name and what it asks for.
type Caught = (&'static str, Action);

/// Installs the handlers of every signal above. Done first thing, before READY=1: a signal that
/// arrives during the start is then held until the daemon is up, never the default action that
/// would leave the socket behind.
fn catch_signals() -> Result<tokio::sync::mpsc::UnboundedReceiver<Caught>, String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Caught>();
    let stops = STOP_SIGNALS
        .iter()
        .map(|&(name, n)| (name, n, Action::Stop));
    let reload = std::iter::once((RELOAD_SIGNAL.0, RELOAD_SIGNAL.1, Action::Reload));
    let ignored = IGNORED_SIGNALS
        .iter()
        .map(|&(name, n, what)| (name, n, Action::Ignore(what)));
    for (name, number, action) in stops.chain(reload).chain(ignored) {
        let mut stream =
            signal(SignalKind::from_raw(number)).map_err(|e| format!("{name} handler: {e}"))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send((name, action)).is_err() {
                    return;
                }
            }
        });
    }
    Ok(rx)
}

/// Logs ignored signals (a flood of one at most once a second).
type SignalLog = std::collections::HashMap<&'static str, (std::time::Instant, u64)>;

/// Returns the next signal that stops the daemon or reloads its config; logs and ignores the
/// others meanwhile.
async fn next_signal(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Caught>,
    last_logged: &mut SignalLog,
) -> Action {
    while let Some((name, action)) = rx.recv().await {
        let what = match action {
            Action::Stop => {
                log::info!("{name}: finishing the request in flight, then exiting");
                return Action::Stop;
            }
            Action::Reload => {
                log::info!("{name}: reloading the configuration");
                return Action::Reload;
            }
            Action::Ignore(what) => what,
        };
        match last_logged.get_mut(name) {
            Some((at, unlogged)) if at.elapsed() < Duration::from_secs(1) => *unlogged += 1,
            Some((at, unlogged)) => {
                log::info!("{name}: {what} ({unlogged} more not logged)");
                (*at, *unlogged) = (std::time::Instant::now(), 0);
            }
            None => {
                log::info!("{name}: {what}");
                last_logged.insert(name, (std::time::Instant::now(), 0));
            }
        }
    }
    // Every handler gone (cannot happen while the runtime runs): stop rather than hang.
    Action::Stop
}

/// SIGHUP: re-reads the config file and applies what can change while running (ports added,
/// removed or moved, writers and connection limits, the inspector's and the reconciler's
/// settings) without touching the kernel; a pass of the reconciler follows. A config that does
/// not load is refused and the running one kept, the reason logged. What only a restart can
/// change (socket, its mode and group, state dir, dataplane settings, metrics address, buffer
/// budget) is named in the log and left as it is.
async fn reload(
    path: &std::path::Path,
    started: &Config,
    control: &Control,
    interval: &watch::Sender<Duration>,
) {
    status("reloading the configuration");
    let loaded = Config::load(path)
        .map_err(|e| e.to_string())
        .and_then(|config| Ok((config.access()?, config)));
    let (access, config) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            log::error!("reload refused, the running configuration is kept: {e}");
            status("reload refused (see the log); running configuration kept");
            return;
        }
    };
    let running = control.access();
    let mut restart_only = Vec::new();
    if config.control.socket != started.control.socket {
        restart_only.push("control.socket");
    }
    if access.mode != running.mode || access.gid != running.gid {
        restart_only.push("control.mode and control.group");
    }
    if access.buffer_budget != running.buffer_budget {
        restart_only.push("control.buffer_budget_mib");
    }
    if config.state.dir != started.state.dir {
        restart_only.push("state.dir");
    }
    if config.dataplane() != started.dataplane() {
        restart_only.push("[dataplane] and [shaping]");
    }
    if config.metrics.listen != started.metrics.listen {
        restart_only.push("metrics.listen");
    }
    if config.core() != started.core() {
        restart_only.push("[core]");
    }
    let ports = config.ports();
    let applied = control.engine.lock().await.reconfigure(
        &ports,
        config.reconcile.repair,
        config.inspector(),
    );
    let said = match applied {
        Ok(said) => said,
        Err(e) => {
            log::error!("reload refused, the running configuration is kept: {e}");
            status("reload refused (see the log); running configuration kept");
            return;
        }
    };
    let writers = access.writer_uids.len();
    control.set_access(vxcd::config::Access {
        mode: running.mode,
        gid: running.gid,
        buffer_budget: running.buffer_budget,
        ..access
    });
    interval.send_replace(Duration::from_secs(config.reconcile.interval_s));
    log::info!(
        "configuration reloaded from {}: {}; {} ports, {writers} writers besides root",
        path.display(),
        if said.is_empty() {
            "no port, repair or inspector change".to_owned()
        } else {
            said.join("; ")
        },
        ports.len()
    );
    if !restart_only.is_empty() {
        log::warn!(
            "reload: {} changed in the file but take effect only at the next restart",
            restart_only.join(", ")
        );
    }
    status(&format!("ready (reloaded): {} ports", ports.len()));
}

/// A start that fails after the socket was bound removes it, so no stale socket is left.
fn gone(config: &Config, error: String) -> String {
    let _ = std::fs::remove_file(&config.control.socket);
    error
}

/// How often a failed store's repair is retried when no systemd watchdog sets the pace.
const STORE_RETRY: Duration = Duration::from_secs(5);

fn notify(state: sd_notify::NotifyState) {
    // Outside systemd there is no NOTIFY_SOCKET and this does nothing.
    if let Err(e) = sd_notify::notify(&[state]) {
        log::debug!("sd_notify: {e}");
    }
}

/// A `STATUS=` line: what `systemctl status vxcd` shows while the daemon starts and runs.
fn status(text: &str) {
    notify(sd_notify::NotifyState::Status(text));
}

async fn run(config: Config, config_path: std::path::PathBuf) -> Result<(), String> {
    let signals = catch_signals()?;
    vxcd::server::raise_fd_limit();
    let access = config.access()?;
    let ports = config.ports();
    status(&format!(
        "loading state from {}",
        config.state.dir.display()
    ));
    let engine::Loaded {
        model,
        store,
        generation,
    } = engine::load_state(&config.state.dir, &ports)?;
    let (keys, vxcs) = (model.keys().count(), model.vxcs().count());
    log::info!(
        "state loaded from {}: {keys} keys, {vxcs} VXCs",
        config.state.dir.display(),
    );
    // The state lock is held (load_state) and the socket taken before the kernel is touched: a
    // daemon that is going to be refused (another vxcd holds the socket) must change nothing.
    let listener = server::bind(&config.control.socket, &access)?;
    let mut dataplane = Dataplane::connect(config.dataplane())
        .await
        .map_err(|e| gone(&config, format!("opening netlink: {e}")))?;
    dataplane.set_port_interfaces(ports.iter().map(|p| p.interface.clone()).collect());
    let events = dataplane
        .events_with_buffer(config.reconcile.event_buffer_bytes)
        .await
        .map_err(|e| gone(&config, format!("subscribing to kernel events: {e}")))?;
    let pass_reads = dataplane
        .second_socket()
        .await
        .map_err(|e| gone(&config, format!("opening netlink: {e}")))?;
    let mut engine = Engine::new(model, store, dataplane, &ports, config.reconcile.repair);
    engine.set_pass_kernel(pass_reads);
    engine.set_compact_every(config.state.compact_every);
    engine.restore_generation(generation);
    engine.set_core(config.core());
    status(&format!(
        "converging {vxcs} VXCs on {} ports with the kernel",
        ports.len()
    ));
    engine.reconcile().await;
    engine.start_inspector(config.inspector());
    let control = Arc::new(Control::new(engine, access));
    let (stop, stopped) = watch::channel(false);
    let server = tokio::spawn(server::serve(listener, control.clone(), stopped.clone()));
    tokio::spawn(engine::report_violations(
        control.reader.clone(),
        control.events.clone(),
        stopped.clone(),
    ));
    if let Some(listen) = config.metrics_listen() {
        let (reader, stopped) = (control.reader.clone(), stopped.clone());
        tokio::spawn(async move {
            if let Err(e) = vxcd::metrics::serve(listen, reader, stopped).await {
                log::error!("{e}; running without metrics");
            }
        });
    }
    let (interval, interval_rx) = watch::channel(Duration::from_secs(config.reconcile.interval_s));
    tokio::spawn(vxcd::reconcile::run(
        control.clone(),
        interval_rx,
        events,
        stopped.clone(),
    ));
    {
        let watchdog = sd_notify::watchdog_enabled();
        let control = control.clone();
        tokio::spawn(async move {
            // Without a watchdog the tick still retries a failed store's repair now and then.
            let mut tick = tokio::time::interval(watchdog.map_or(STORE_RETRY, |p| p / 2));
            let mut failing = false;
            loop {
                tick.tick().await;
                // Ping only when the engine answers and the state can be written: a wedged engine
                // or a store that cannot write gets the daemon restarted by systemd.
                let store_failure = control.engine.lock().await.store_failure();
                match store_failure {
                    Some(e) => {
                        if !failing {
                            log::error!(
                                "the state cannot be written; watchdog no longer pinged: {e}"
                            );
                        }
                        failing = true;
                    }
                    None => {
                        if failing {
                            log::info!("the state can be written again");
                        }
                        failing = false;
                        if watchdog.is_some() {
                            notify(sd_notify::NotifyState::Watchdog);
                        }
                    }
                }
            }
        });
    }
    notify(sd_notify::NotifyState::Ready);
    status(&format!(
        "ready: {keys} keys, {vxcs} VXCs, {} ports; listening on {}",
        ports.len(),
        config.control.socket.display()
    ));
    log::info!("listening on {}", config.control.socket.display());

    let (mut signals, mut signal_log) = (signals, SignalLog::new());
    while next_signal(&mut signals, &mut signal_log).await == Action::Reload {
        reload(&config_path, &config, &control, &interval).await;
    }
    notify(sd_notify::NotifyState::Stopping);
    status("stopping: finishing the request in flight; kernel state stays");
    let _ = stop.send(true);
    let _ = server.await;
    // Taking the lock waits for the request in flight; the dataplane stays as it is.
    let mut engine = control.engine.lock().await;
    engine.finish_compaction().await;
    drop(engine);
    let _ = std::fs::remove_file(&config.control.socket);
    log::info!("stopped; kernel state left in place");
    Ok(())
}
