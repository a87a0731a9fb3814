//! `/metrics`: the Prometheus text format over HTTP/1 (`[metrics] listen`; off when absent).
//!
//! Two kinds of figures:
//! - the daemon's own (reconcile passes and their durations, drift repairs, requests by op and
//!   outcome, store write latency), counted where they happen, in [`daemon`];
//! - per VXC and per port (state, rate, the kernel's counters of each end and shaper, the
//!   inspector's frames, violations and probes), read at scrape time from the published state
//!   and the kernel (`vxc.stats`), so a scrape shows what the kernel holds now.
//!
//! Each scrape builds one registry: clones of the daemon's metrics (they share their values)
//! and the per-VXC families just read. Scrapes are served one at a time ([`MAX_SCRAPES`] may
//! wait): a scrape reads every end, and a flood of them must not become a flood of netlink
//! requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::engine::Reader;
use crate::inspector::Direction;

/// Scrapes waiting or served at once; more are answered 503 at once.
const MAX_SCRAPES: usize = 4;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub op: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VxcLabels {
    vxc: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    vxc: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    vxc: String,
    end: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    port: String,
    direction: String,
}

/// The daemon's own figures, counted where they happen.
pub struct DaemonMetrics {
    pub reconcile_passes: Counter,
    pub reconcile_seconds: Histogram,
    pub drift_repairs: Counter,
    /// Bursts of kernel events that were all vxcd's own, so ran no pass.
    pub own_event_bursts: Counter,
    pub requests: Family<RequestLabels, Counter>,
    pub store_write_seconds: Histogram,
    /// Ops per group commit (`server/group.rs`): one durable write each.
    pub write_group_ops: Histogram,
}

/// The daemon's metrics (one set per process).
pub fn daemon() -> &'static DaemonMetrics {
    static METRICS: OnceLock<DaemonMetrics> = OnceLock::new();
    METRICS.get_or_init(|| DaemonMetrics {
        reconcile_passes: Counter::default(),
        // 1 ms .. about 65 s.
        reconcile_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
        drift_repairs: Counter::default(),
        own_event_bursts: Counter::default(),
        requests: Family::default(),
        // 100 us .. about 3 s.
        store_write_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
        // 1 .. 512 (engine::MAX_GROUP).
        write_group_ops: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
    })
}

/// Counts one answered request.
pub fn count_request(op: &str, outcome: &str) {
    daemon()
        .requests
        .get_or_create(&RequestLabels {
            op: op.to_owned(),
            outcome: outcome.to_owned(),
        })
        .inc();
}

/// The text of one scrape.
pub async fn scrape(reader: &Reader) -> Result<String, String> {
    let mut registry = Registry::with_prefix("vxcd");
    let d = daemon();
    registry.register(
        "reconcile_passes",
        "Reconcile passes (start, periodic, kernel events)",
        d.reconcile_passes.clone(),
    );
    registry.register(
        "reconcile_duration_seconds",
        "Duration of reconcile passes",
        d.reconcile_seconds.clone(),
    );
    registry.register(
        "drift_repairs",
        "Kernel objects repaired or orphans removed by the reconciler",
        d.drift_repairs.clone(),
    );
    registry.register(
        "own_event_bursts",
        "Bursts of kernel events that were all vxcd's own changes (no reconcile pass run)",
        d.own_event_bursts.clone(),
    );
    registry.register(
        "write_group_ops",
        "Writes per group commit: key.put, vxc.put and vxc.delete made durable by one journal write",
        d.write_group_ops.clone(),
    );
    registry.register(
        "requests",
        "Control requests answered, by op and outcome (ok or the error code)",
        d.requests.clone(),
    );
    registry.register(
        "store_write_duration_seconds",
        "Time to make a change durable (write and fdatasync)",
        d.store_write_seconds.clone(),
    );

    let stats = reader.stats_views(None).await.map_err(|f| f.message)?;
    let state_family = Family::<StateLabels, Gauge>::default();
    let rate = Family::<VxcLabels, Gauge>::default();
    type EndFamily = Family<EndLabels, Counter>;
    type Read = fn(&crate::protocol::EndStatsView) -> Option<u64>;
    // One row per counter family: its name, its help, and where an end's value comes from
    // (`None`: the object is not in the kernel, so no sample).
    let end_counters: [(&str, &str, Read); 10] = [
        ("end_rx_bytes", "Bytes the end interface received", |e| {
            e.counters.as_ref().map(|c| c.rx_bytes)
        }),
        (
            "end_rx_packets",
            "Packets the end interface received",
            |e| e.counters.as_ref().map(|c| c.rx_packets),
        ),
        (
            "end_rx_dropped",
            "Packets the end interface dropped on receive",
            |e| e.counters.as_ref().map(|c| c.rx_dropped),
        ),
        ("end_tx_bytes", "Bytes the end interface sent", |e| {
            e.counters.as_ref().map(|c| c.tx_bytes)
        }),
        ("end_tx_packets", "Packets the end interface sent", |e| {
            e.counters.as_ref().map(|c| c.tx_packets)
        }),
        (
            "end_tx_dropped",
            "Packets the end interface dropped on send",
            |e| e.counters.as_ref().map(|c| c.tx_dropped),
        ),
        (
            "shaper_sent_bytes",
            "Bytes the end's shaper (TBF) sent",
            |e| e.shaper.as_ref().map(|s| s.sent_bytes),
        ),
        (
            "shaper_sent_packets",
            "Packets the end's shaper sent",
            |e| e.shaper.as_ref().map(|s| s.sent_packets),
        ),
        (
            "shaper_drops",
            "Packets the end's shaper dropped (over the rate)",
            |e| e.shaper.as_ref().map(|s| s.drops),
        ),
        (
            "shaper_overlimits",
            "Times the end's shaper was over its rate",
            |e| e.shaper.as_ref().map(|s| s.overlimits),
        ),
    ];
    let end_families: Vec<(&str, &str, Read, EndFamily)> = end_counters
        .into_iter()
        .map(|(name, help, read)| (name, help, read, EndFamily::default()))
        .collect();
    let backlog = Family::<EndLabels, Gauge>::default();
    for vxc in &stats {
        state_family
            .get_or_create(&StateLabels {
                vxc: vxc.id.clone(),
                state: vxc.state.clone(),
            })
            .set(1);
        rate.get_or_create(&VxcLabels {
            vxc: vxc.id.clone(),
        })
        .set(i64::from(vxc.rate_mbps));
        for (end, view) in [("a", &vxc.a_end), ("b", &vxc.b_end)] {
            let labels = EndLabels {
                vxc: vxc.id.clone(),
                end: end.to_owned(),
            };
            if let Some(s) = &view.shaper {
                backlog
                    .get_or_create(&labels)
                    .set(i64::try_from(s.backlog_bytes).unwrap_or(i64::MAX));
            }
            for (_, _, read, family) in &end_families {
                if let Some(value) = read(view) {
                    family.get_or_create(&labels).inc_by(value);
                }
            }
        }
    }
    registry.register(
        "vxc_state",
        "1 for the VXC's current state (up, shutdown, pending, failed)",
        state_family,
    );
    registry.register(
        "vxc_rate_mbps",
        "The VXC's rate limit, both directions",
        rate,
    );
    for (name, help, _, family) in end_families {
        registry.register(name, help, family);
    }
    registry.register(
        "shaper_backlog_bytes",
        "Bytes queued in the end's shaper",
        backlog,
    );

    let frames = Family::<PortLabels, Counter>::default();
    let violations = Family::<PortLabels, Counter>::default();
    let probes = Family::<PortLabels, Counter>::default();
    let state = reader.state();
    if let Some(inspector) = &state.inspector {
        for port in inspector.snapshot().ports {
            let labels = |direction: &str| PortLabels {
                port: port.port.clone(),
                direction: direction.to_owned(),
            };
            let rx: u64 = port.ends.iter().map(|e| e.rx_frames).sum();
            let tx: u64 = port.ends.iter().map(|e| e.tx_frames).sum();
            frames.get_or_create(&labels("rx")).inc_by(rx);
            frames.get_or_create(&labels("tx")).inc_by(tx);
            for direction in ["rx", "tx"] {
                let count: u64 = port
                    .violations
                    .iter()
                    .filter(|v| (v.direction == Direction::Tx) == (direction == "tx"))
                    .map(|v| v.count)
                    .sum();
                violations.get_or_create(&labels(direction)).inc_by(count);
            }
            probes.get_or_create(&labels("rx")).inc_by(port.probes_rx);
            probes.get_or_create(&labels("tx")).inc_by(port.probes_tx);
        }
    }
    drop(state);
    registry.register(
        "port_frames",
        "Frames of VXC ends the inspector counted on the port",
        frames,
    );
    registry.register(
        "port_violations",
        "Frames the inspector counted as violations on the port",
        violations,
    );
    registry.register("port_probes", "Verify probes seen on the port", probes);

    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .map_err(|e| format!("encoding the metrics: {e}"))?;
    Ok(text)
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// Serves `GET /metrics` on `listen` until `shutdown` turns true. A bind failure is returned
/// (the daemon logs it and runs on without metrics: they are not worth refusing the start).
pub async fn serve(
    listen: SocketAddr,
    reader: Reader,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("metrics: binding {listen}: {e}"))?;
    log::info!("metrics on http://{listen}/metrics");
    let scrapes = Arc::new(Semaphore::new(1));
    let waiting = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    log::warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return Ok(()),
        };
        let reader = reader.clone();
        let (scrapes, waiting) = (scrapes.clone(), waiting.clone());
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let reader = reader.clone();
                    let (scrapes, waiting) = (scrapes.clone(), waiting.clone());
                    async move {
                        if request.method() != hyper::Method::GET
                            || request.uri().path() != "/metrics"
                        {
                            return Ok::<_, Infallible>(respond(
                                StatusCode::NOT_FOUND,
                                "text/plain",
                                "only GET /metrics is served here\n".into(),
                            ));
                        }
                        let Ok(_place) = waiting.try_acquire() else {
                            return Ok(respond(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "text/plain",
                                "too many scrapes at once\n".into(),
                            ));
                        };
                        let _turn = scrapes.acquire().await;
                        Ok(match scrape(&reader).await {
                            Ok(text) => respond(
                                StatusCode::OK,
                                "text/plain; version=0.0.4; charset=utf-8",
                                text,
                            ),
                            Err(e) => {
                                respond(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", e + "\n")
                            }
                        })
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(io, service);
            if let Err(e) = tokio::time::timeout(Duration::from_secs(60), connection).await {
                log::debug!("metrics: connection closed: {e}");
            }
        });
    }
}
