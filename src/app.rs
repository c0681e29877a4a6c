//! The composition root: builds every stage from the config, wires them (receive → route →
//! buffer → decide → export), serves the listeners, and shuts down in tiers within a deadline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::peer::PeerClient;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admin::fanout::{Fanout, DRIFT_CHECK_EVERY, PEER_TIMEOUT};
use crate::admin::{self, AdminState};
use crate::buffer::{self, KeptSink, Limits};
use crate::cluster::forward::{PeerIntakeCounters, SenderSettings};
use crate::cluster::membership::MembershipHandle;
use crate::cluster::peer::InfoResponse;
use crate::cluster::status::ClusterStatus;
use crate::config::{ClusterConfig, Config, MembershipKind};
use crate::decide::Decider;
use crate::export::{self, sink::Sink};
use crate::model::{DropReason, TenantId};
use crate::otlp::encode::AnnotationKeys;
use crate::otlp::ingest::{IngestOptions, SpanLimits};
use crate::receive::peer::PeerService;
use crate::receive::{self, Receiver};
use crate::reload::{self, LiveRules, RulesWatcher, Trigger};
use crate::route::{ClusterRoute, Router};
use crate::sample::{SamplerBoard, ShardSamplers};
use crate::shadow::ShadowStats;
use crate::stats::Stats;
use crate::tags::TagTable;

/// Attribute naming the deciding rule on every exported span.
pub const RULE_ATTRIBUTE: &str = "tailsift.rule";

/// A running proxy.
pub struct Running {
    /// Bound OTLP/gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound OTLP/HTTP address.
    pub http_addr: SocketAddr,
    /// Bound admin address.
    pub admin_addr: SocketAddr,
    /// Bound peer-protocol address (cluster only).
    pub peer_addr: Option<SocketAddr>,
    reread_peers: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Counters, for tests and the caller's final report.
    pub stats: Arc<Stats>,
    /// The live rules.
    pub rules: Arc<LiveRules>,
    /// Runtime tenant tags.
    pub tags: Arc<TagTable>,
    /// Shadow rules outcomes.
    pub shadow_stats: Arc<ShadowStats>,
    _watcher: Option<RulesWatcher>,
    stop: watch::Sender<bool>,
    done: JoinHandle<()>,
}

/// Starts every stage and listener; returns once all listeners are bound.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let stats = Arc::new(Stats::default());
    stats.tenants.set_max_tenants(config.stats.max_tenants);
    let rules = Arc::new(
        LiveRules::load_with_shadow(&config.rules.file, config.rules.shadow_file.as_deref())
            .with_context(|| format!("loading rules from {}", config.rules.file.display()))?,
    );
    let tags = Arc::new(TagTable::load(&config.rules.tags_file).context("loading tenant tags")?);
    let shadow_stats = Arc::new(ShadowStats::default());
    let watcher = if config.rules.watch {
        match reload::watch(&rules, reload::WATCH_DEBOUNCE) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "rules file not watched; reload with SIGHUP or the admin API");
                None
            }
        }
    } else {
        None
    };
    let inputs = buffer::DecideInputs {
        rules: rules.handle(),
        shadow: rules.shadow_handle(),
        tags: tags.clone(),
        shadow_stats: shadow_stats.clone(),
    };
    let keys = AnnotationKeys {
        sample_rate: config.export.sample_rate_attribute.clone(),
        rule: RULE_ATTRIBUTE.to_string(),
    };

    // export
    let sink = Sink::build(&config.export).context("setting up the exporter")?;
    let spool = match &config.export.spool_dir {
        Some(dir) => Some(Arc::new(
            export::spool::Spool::open(dir, config.export.spool_max_bytes.0)
                .context("opening the export spool")?,
        )),
        None => None,
    };
    if let Some(spool) = &spool {
        stats.spooled_spans.store(spool.spans() as i64, Relaxed);
    }
    // Logs and metrics requests spool beside the traces, each in its own subdirectory (the
    // spool's file names carry a record count, not the signal).
    let signal_spool = |name: &str| -> anyhow::Result<Option<Arc<export::spool::Spool>>> {
        match &config.export.spool_dir {
            Some(dir) => Ok(Some(Arc::new(
                export::spool::Spool::open(&dir.join(name), config.export.spool_max_bytes.0)
                    .with_context(|| format!("opening the {name} export spool"))?,
            ))),
            None => Ok(None),
        }
    };
    let logs_spool = signal_spool("logs")?;
    let metrics_spool = signal_spool("metrics")?;
    let metrics_sink = Sink::build_for(&config.export, crate::otlp::Signal::Metrics)
        .context("setting up the metrics exporter")?;
    let logs_sink = Sink::build_for(&config.export, crate::otlp::Signal::Logs)
        .context("setting up the logs exporter")?;
    let (metrics_queue, metrics_rx) = export::metrics::queue(&config.export, stats.clone());
    let (stop_metrics, metrics_stopped) = watch::channel(false);
    let metrics_exporter = tokio::spawn(export::metrics::run(
        metrics_rx,
        metrics_sink,
        config.export.clone(),
        metrics_spool,
        stats.clone(),
        metrics_stopped,
    ));
    let (intake, export_rx) =
        export::intake(&config.export, config.buffer.max_memory.0, stats.clone());
    let exporter = tokio::spawn(export::run(
        export_rx,
        export::Sinks {
            traces: sink,
            logs: logs_sink,
            logs_spool,
        },
        config.export.clone(),
        keys.clone(),
        spool,
        stats.clone(),
    ));

    // buffer shards
    let shard_count = match config.buffer.shards {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let limits = Limits {
        root_grace: config.buffer.root_grace.0,
        trace_timeout: config.buffer.trace_timeout.0,
        max_spans_per_trace: config.buffer.max_spans_per_trace,
        // Early decisions start at 90% of the budget; refusals at 100% (receive).
        max_bytes: config.buffer.max_memory.bytes() / 10 * 9 / shard_count,
        decision_cache: config.buffer.decision_cache_traces / shard_count,
    };
    let export_queue_max_bytes = intake.max_bytes();
    let intake = Arc::new(intake);
    // Receive queues logs without a trace straight into export through a weak handle, so
    // the export queue still closes when the last shard has drained at shutdown.
    let untraced_logs = Arc::new(export::UntracedIntake::new(&intake));
    let intake: Arc<dyn KeptSink> = intake;
    let (stop_tx, stop_rx) = watch::channel(false);
    // Shutdown begins here; in a cluster the node leaves before `stop` reaches the stages.
    let (begin_tx, mut begin_rx) = watch::channel(false);
    let mut shard_senders = Vec::with_capacity(shard_count);
    let mut shards = Vec::with_capacity(shard_count);
    let samplers = SamplerBoard::new(shard_count);
    for i in 0..shard_count {
        let (tx, rx) = mpsc::channel(256);
        shard_senders.push(tx);
        shards.push(tokio::spawn(buffer::run_shard(
            buffer::table::Table::new(limits.clone()),
            rx,
            stop_rx.clone(),
            inputs.clone(),
            Decider::new(ShardSamplers::new(shard_count, Some((samplers.clone(), i)))),
            intake.clone(),
            stats.clone(),
        )));
    }
    drop(intake);

    // The admin listener is bound first: the peers learn its address through Peer/Info.
    let admin_listener = bind(config.admin.listen, "admin.listen").await?;
    let admin_addr = admin_listener.local_addr()?;
    let admin_token = Arc::new(
        admin::auth::AdminToken::load(&config.admin, std::env::var(admin::auth::TOKEN_ENV).ok())
            .context("loading the admin token")?,
    );
    admin_token.warn_if_open(admin_addr);

    // route (and, in a cluster, membership, forwarding and the peer listener)
    let cluster = match &config.cluster {
        Some(cc) => Some(
            start_cluster(
                cc,
                &config,
                shard_senders.clone(),
                &stats,
                &rules,
                &samplers,
                &stop_rx,
                admin_addr,
                &admin_token,
            )
            .await?,
        ),
        None => None,
    };
    let router = match &cluster {
        Some(c) => c.router.clone(),
        None => Router::new(shard_senders, config.receive.queue_timeout.0),
    };

    // receive
    let api_keys = match &config.auth {
        Some(auth) => Some(Arc::new(
            receive::auth::ApiKeys::load(auth).context("loading the [auth] keys file")?,
        )),
        None => None,
    };
    let reload_hook = reload::chain_hooks(
        reload::chain_hooks(
            cluster.as_ref().and_then(|c| c.reread_peers.clone()),
            api_keys.clone().map(|keys| {
                Arc::new(move || {
                    // A failure is logged by reload; the previous keys stay.
                    let _ = keys.reload();
                }) as reload::ReloadHook
            }),
        ),
        Some({
            let token = admin_token.clone();
            // A failure is logged by reload; the previous token stays.
            Arc::new(move || drop(token.reload())) as reload::ReloadHook
        }),
    );
    let receiver = Arc::new(
        Receiver::new(
            IngestOptions {
                tenant_attribute: config.tenant.resource_attribute.clone(),
                default_tenant: TenantId::new(&config.tenant.default),
                reserved_attributes: keys.reserved(),
                limits: SpanLimits {
                    max_attributes_per_span: config.receive.max_attributes_per_span,
                    max_attribute_bytes: config.receive.max_attribute_bytes.map(|b| b.bytes()),
                    max_spans_per_request: config.receive.max_spans_per_request,
                },
            },
            router.clone(),
            stats.clone(),
            config.tenant.header.clone(),
            config.receive.max_request_bytes.bytes(),
            config.buffer.max_memory.bytes(),
            export_queue_max_bytes,
        )
        .with_api_keys(api_keys.clone())
        .with_pass_through_headers(config.export.pass_through_headers.names())
        .with_metrics(Arc::new(metrics_queue))
        .with_untraced_logs(untraced_logs, config.logs.untraced_sample_rate),
    );
    let grpc_listener = bind(config.receive.grpc_listen, "receive.grpc_listen").await?;
    let http_listener = bind(config.receive.http_listen, "receive.http_listen").await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    let conn_options = receive_connections(&config.receive, &stats, &stop_rx)?;
    let grpc = {
        let mut stop = stop_rx.clone();
        let svc = receive::grpc::TraceService::new(receiver.clone());
        let metrics_svc = receive::grpc::MetricsService::new(receiver.clone());
        let logs_svc = receive::grpc::LogsService::new(receiver.clone());
        let server = tonic::transport::Server::builder()
            .concurrency_limit_per_connection(config.receive.max_concurrent_requests)
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(config.receive.http2_keepalive_interval.0))
            .http2_keepalive_timeout(Some(config.receive.http2_keepalive_timeout.0))
            // OTLP requests run to hundreds of KiB: HTTP/2's default 64 KiB windows would
            // stall each one on flow-control round trips.
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .max_frame_size(Some(1 << 20))
            .add_service(svc)
            .add_service(metrics_svc)
            .add_service(logs_svc);
        let incoming =
            receive::conn::Incoming::new(grpc_listener, conn_options.clone()).into_stream();
        tokio::spawn(async move {
            let signal = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = server.serve_with_incoming_shutdown(incoming, signal).await {
                tracing::error!(error = %e, "gRPC listener failed");
            }
        })
    };
    let http = {
        let mut stop = stop_rx.clone();
        let app = receive::http::router(receiver.clone(), config.receive.max_concurrent_requests);
        let incoming = receive::conn::Incoming::new(http_listener, conn_options);
        let options = receive::http::ServeOptions {
            header_read_timeout: config.receive.header_read_timeout.0,
            keepalive_interval: config.receive.http2_keepalive_interval.0,
            keepalive_timeout: config.receive.http2_keepalive_timeout.0,
        };
        tokio::spawn(async move {
            let signal = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            receive::http::serve(incoming, app, options, signal).await;
        })
    };
    let ready = Arc::new(AtomicBool::new(true));
    let fanout = cluster.as_ref().map(|c| c.fanout.clone());
    let admin_task = {
        let mut stop = stop_rx.clone();
        let app = admin::router(AdminState {
            stats: stats.clone(),
            rules: rules.clone(),
            tags: tags.clone(),
            shadow: shadow_stats.clone(),
            samplers,
            ready: ready.clone(),
            max_memory: config.buffer.max_memory.0 as i64,
            cluster: cluster.as_ref().map(|c| c.status.clone()),
            fanout: fanout.clone(),
            on_reload: reload_hook.clone(),
        })
        .merge(admin::tenants::router(admin::tenants::TenantApi {
            stats: stats.clone(),
            traces: Arc::new(router),
            fanout: fanout.clone(),
        }));
        let app = admin::auth::protect(app, admin_token.clone());
        tokio::spawn(async move {
            // The admin API stays up until the very end, so shutdown can be watched.
            let signal = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let _ = axum::serve(admin_listener, app)
                .with_graceful_shutdown(signal)
                .await;
        })
    };

    // A node that was down while a tag changed catches up from a peer that answers.
    if let Some(fanout) = fanout {
        let tags = tags.clone();
        tokio::spawn(async move { fanout.copy_tags(&tags).await });
    }

    let peer_addr = cluster.as_ref().map(|c| c.peer_addr);
    let reread_peers = reload_hook;
    let deadline = config.shutdown.timeout.0;
    let done = {
        let stats = stats.clone();
        let mut stop = stop_rx.clone();
        let mut cluster = cluster;
        tokio::spawn(async move {
            tokio::select! {
                _ = begin_rx.wait_for(|s| *s) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            let began = tokio::time::Instant::now();
            ready.store(false, Relaxed);
            receiver.stop_accepting();
            if let Some(c) = &cluster {
                // Leave first, with at most 60% of the shutdown budget.
                leave_cluster(c, &stats, deadline.mul_f64(0.6)).await;
            }
            let _ = stop_tx.send(true);
            let deadline = deadline.saturating_sub(began.elapsed());
            let drain = async {
                let _ = grpc.await;
                let _ = http.await;
                // No listener can queue metrics any more: send what is queued, then stop.
                let _ = stop_metrics.send(true);
                if let Some(c) = &mut cluster {
                    c.peer_service.stop_accepting();
                    let _ = (&mut c.peer_server).await;
                    c.watcher.abort();
                    if let Some(p) = c.provider.take() {
                        let _ = p.await;
                    }
                }
                for shard in shards {
                    let _ = shard.await;
                }
                if let Some(c) = &cluster {
                    c.router.join_senders().await;
                }
                let _ = exporter.await;
                let _ = metrics_exporter.await;
            };
            if tokio::time::timeout(deadline, drain).await.is_err() {
                let buffered = stats.buffered_spans.load(Relaxed).max(0) as u64;
                // Queued spans, plus decided ones still waiting for room in the queue.
                let queued = (stats.export_queue_spans.load(Relaxed)
                    + stats.handoff_spans.load(Relaxed))
                .max(0) as u64;
                let forwarding: i64 = cluster
                    .as_ref()
                    .map(|c| {
                        c.router
                            .peer_queues()
                            .iter()
                            .map(|q| q.queued_spans())
                            .sum()
                    })
                    .unwrap_or(0);
                let queued = queued + forwarding.max(0) as u64;
                tracing::error!(
                    buffered,
                    queued,
                    "shutdown deadline passed; undelivered spans counted as dropped"
                );
                stats.drop_spans(DropReason::ShutdownDeadline, buffered + queued);
                let metric_points = stats.metrics_queue_points.load(Relaxed).max(0) as u64;
                if metric_points > 0 {
                    tracing::error!(
                        metric_points,
                        "shutdown deadline passed; queued metric points counted as dropped"
                    );
                    stats.drop_metric_points(DropReason::ShutdownDeadline, metric_points);
                }
            }
            let _ = admin_task.await;
        })
    };

    match peer_addr {
        Some(peer) => tracing::info!(
            "tailsift listening grpc={grpc_addr} http={http_addr} admin={admin_addr} peer={peer} shards={shard_count}"
        ),
        None => tracing::info!(
            "tailsift listening grpc={grpc_addr} http={http_addr} admin={admin_addr} shards={shard_count}"
        ),
    }
    Ok(Running {
        grpc_addr,
        http_addr,
        admin_addr,
        peer_addr,
        reread_peers,
        stats,
        rules,
        tags,
        shadow_stats,
        _watcher: watcher,
        stop: begin_tx,
        done,
    })
}

/// The running parts of a cluster node.
struct ClusterParts {
    router: Router,
    status: Arc<ClusterStatus>,
    peer_service: PeerService,
    peer_addr: SocketAddr,
    peer_server: JoinHandle<()>,
    watcher: JoinHandle<()>,
    provider: Option<JoinHandle<()>>,
    reread_peers: Option<Arc<dyn Fn() + Send + Sync>>,
    membership: Arc<MembershipHandle>,
    fanout: Arc<Fanout>,
}

/// Builds membership, the clustered router, the peer listener and the membership watcher.
#[allow(clippy::too_many_arguments)]
async fn start_cluster(
    cc: &ClusterConfig,
    config: &Config,
    shard_senders: Vec<mpsc::Sender<buffer::ShardMsg>>,
    stats: &Arc<Stats>,
    rules: &Arc<LiveRules>,
    samplers: &Arc<SamplerBoard>,
    stop_rx: &watch::Receiver<bool>,
    admin_addr: SocketAddr,
    admin_token: &Arc<admin::auth::AdminToken>,
) -> anyhow::Result<ClusterParts> {
    if let Some(tls) = &cc.tls {
        crate::cluster::peer::PeerClientTls::load(tls)
            .context("loading the [cluster.tls] client certificate")?
            .install();
    }
    let me = cc.advertise_address();
    let initial = match cc.membership {
        MembershipKind::Static => cc.peers.clone(),
        MembershipKind::Dns | MembershipKind::Redis => vec![me.clone()],
    };
    let membership = MembershipHandle::new(&me, initial);
    if cc.membership == MembershipKind::Static {
        membership.report_ok();
        if !cc.peers.contains(&me) {
            tracing::warn!(advertise = %me, peers = ?cc.peers, "this node's advertise address is not in cluster.peers: it owns no traces and forwards everything");
        }
    }
    let router = Router::clustered(
        shard_senders,
        config.receive.queue_timeout.0,
        ClusterRoute {
            membership: membership.clone(),
            queue_max_bytes: cc.forward_queue_max_bytes.0,
            sender: SenderSettings {
                me: me.clone(),
                batch_max_spans: cc.forward_batch_max_spans,
                batch_timeout: cc.forward_batch_timeout.0,
                retry_initial: cc.forward_retry_initial.0,
                retry_max: cc.forward_retry_max.0,
                peer_down_after: cc.peer_down_after.0,
            },
            forward_timeout: cc.forward_timeout.0,
            stats: stats.clone(),
            stop: stop_rx.clone(),
        },
    );
    let intake = Arc::new(PeerIntakeCounters::default());
    let info: Arc<dyn Fn() -> InfoResponse + Send + Sync> = {
        let rules = rules.clone();
        let membership = membership.clone();
        let me = me.clone();
        let admin = crate::admin::fanout::reachable_admin(admin_addr, &me).unwrap_or_else(|| {
            tracing::warn!(admin = %admin_addr, advertise = %me, "the admin API listens on loopback only: the other members cannot reach it, so cluster-wide admin requests (scope=cluster, tag propagation) skip this node; set [admin] listen to an address they reach");
            String::new()
        });
        Arc::new(move || InfoResponse {
            advertise: me.clone(),
            rules_hash: format!("{:016x}", rules.snapshot().source_hash()),
            members: membership.current().addrs().to_vec(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            admin: admin.clone(),
        })
    };
    let keys_reserved = AnnotationKeys {
        sample_rate: config.export.sample_rate_attribute.clone(),
        rule: RULE_ATTRIBUTE.to_string(),
    }
    .reserved();
    let peer_service = PeerService::new(
        router.clone(),
        keys_reserved,
        SpanLimits {
            max_attributes_per_span: config.receive.max_attributes_per_span,
            max_attribute_bytes: config.receive.max_attribute_bytes.map(|b| b.bytes()),
            max_spans_per_request: config.receive.max_spans_per_request,
        },
        stats.clone(),
        intake.clone(),
        config.receive.max_request_bytes.bytes(),
        info.clone(),
        {
            let membership = membership.clone();
            Arc::new(move |addr: &str, leaving: bool| membership.announce(addr, leaving))
        },
    );
    let peer_listener = bind(cc.peer_listen, "cluster.peer_listen").await?;
    let peer_addr = peer_listener.local_addr()?;
    let peer_server = {
        let mut stop = stop_rx.clone();
        let server = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .max_frame_size(Some(1 << 20))
            .add_service(peer_service.clone());
        let signal = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        match &cc.tls {
            None => {
                let incoming = tokio_stream_from(peer_listener);
                tokio::spawn(async move {
                    if let Err(e) = server.serve_with_incoming_shutdown(incoming, signal).await {
                        tracing::error!(error = %e, "peer listener failed");
                    }
                })
            }
            Some(tls) => {
                let server_tls = Arc::new(
                    crate::receive::tls::ServerTls::load(&tls.server_files(), stats.clone())
                        .context("loading the [cluster.tls] certificate")?,
                );
                server_tls.watch(stop_rx.clone());
                let incoming = crate::receive::conn::Incoming::new(
                    peer_listener,
                    crate::receive::conn::ConnOptions {
                        max_connections: PEER_MAX_CONNECTIONS,
                        tls: Some(server_tls),
                        handshake_timeout: Duration::from_secs(10),
                        idle_timeout: PEER_IDLE_TIMEOUT,
                    },
                )
                .into_stream();
                tracing::info!(cert_file = %tls.cert_file.display(), "peer protocol speaks mutual TLS");
                tokio::spawn(async move {
                    if let Err(e) = server.serve_with_incoming_shutdown(incoming, signal).await {
                        tracing::error!(error = %e, "peer listener failed");
                    }
                })
            }
        }
    };
    let provider = start_provider(cc, &membership, stop_rx);
    if provider.is_some() && !membership.wait_first_read(FIRST_MEMBERSHIP_WAIT).await {
        tracing::warn!(
            kind = ?cc.membership,
            error = membership.report().last_error.unwrap_or_default(),
            "no membership read within {FIRST_MEMBERSHIP_WAIT:?}; starting alone and joining the others when the provider answers"
        );
    }
    // Back in service: peers that saw this node leave (SIGTERM) route to it again.
    announce_to_peers(
        &membership,
        false,
        cc.forward_timeout.0.min(Duration::from_secs(2)),
    );
    let reread_peers: Option<Arc<dyn Fn() + Send + Sync>> = match (&cc.membership, &config.source) {
        (MembershipKind::Static, Some(path)) => {
            let path = path.clone();
            let membership = membership.clone();
            Some(Arc::new(move || {
                match Config::load(&path) {
                Ok(c) => match c.cluster {
                    Some(cc) if cc.membership == MembershipKind::Static => {
                        tracing::info!(peers = ?cc.peers, "re-read cluster.peers");
                        membership.publish(cc.peers);
                    }
                    _ => tracing::warn!("the config file no longer has a static [cluster]; members unchanged (restart to change the membership kind)"),
                },
                Err(e) => tracing::warn!(error = %e, "cannot re-read cluster.peers; members unchanged"),
            }
            }))
        }
        _ => None,
    };
    let watcher = {
        let router = router.clone();
        let membership = membership.clone();
        let samplers = samplers.clone();
        let mut changes = membership.subscribe();
        let mut stop = stop_rx.clone();
        samplers.set_members(membership.current().count());
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            tokio::pin!(stopped);
            let mut tick = tokio::time::interval(STRAY_CHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        samplers.set_members(membership.current().count());
                        router.poke_senders();
                        router.rebalance().await;
                    }
                    _ = tick.tick() => {
                        if router.take_strays() {
                            router.rebalance().await;
                        }
                    }
                    _ = &mut stopped => return,
                }
            }
        })
    };
    let fanout = Fanout::new(membership.clone(), PEER_TIMEOUT, admin_token.clone());
    // Ends with the stop signal; nothing waits for it at shutdown.
    tokio::spawn(
        fanout
            .clone()
            .watch_drift(info.clone(), DRIFT_CHECK_EVERY, stop_rx.clone()),
    );
    // Peers left out for not answering are probed once a second and let back in when they do.
    {
        let membership = membership.clone();
        let mut stop = stop_rx.clone();
        let timeout = cc.forward_timeout.0.min(Duration::from_secs(2));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                for addr in membership.suspected() {
                    let Ok(client) = PeerClient::new(&addr, timeout) else {
                        continue;
                    };
                    if client.info().await.is_ok() {
                        tracing::info!(peer = %addr, "unreachable peer answers again; routing to it");
                        membership.announce(&addr, false);
                    }
                }
            }
        });
    }
    let status = Arc::new(ClusterStatus {
        kind: cc.membership,
        membership: membership.clone(),
        queues: {
            let router = router.clone();
            Arc::new(move || router.peer_queues())
        },
        intake,
        info,
        drift: fanout.drift.clone(),
    });
    Ok(ClusterParts {
        router,
        status,
        peer_service,
        peer_addr,
        peer_server,
        watcher,
        provider,
        reread_peers,
        membership,
        fanout,
    })
}

/// Tells every other member, concurrently and best effort, that this node is leaving (or back
/// in service); returns once all have answered or failed.
fn announce_to_peers(
    membership: &Arc<MembershipHandle>,
    leaving: bool,
    timeout: Duration,
) -> JoinHandle<()> {
    let me = membership.me().to_string();
    let others: Vec<String> = membership
        .provided()
        .into_iter()
        .filter(|a| *a != me)
        .collect();
    tokio::spawn(async move {
        let mut calls = tokio::task::JoinSet::new();
        for addr in others {
            let me = me.clone();
            calls.spawn(async move {
                let result = match PeerClient::new(&addr, timeout) {
                    Ok(client) => client
                        .announce(&me, leaving)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                (addr, result)
            });
        }
        while let Some(done) = calls.join_next().await {
            if let Ok((peer, Err(error))) = done {
                tracing::debug!(peer, error, leaving, "could not announce to a peer");
            }
        }
    })
}

/// Graceful leave (SIGTERM on a member of a cluster with others): tells the others, stops
/// owning anything, and hands every buffered trace and remembered decision to its new owner,
/// until nothing is held or queued for a peer or `limit` passes. The last member of a cluster
/// does nothing here: it decides what it holds at shutdown, as a single node does.
async fn leave_cluster(c: &ClusterParts, stats: &Stats, limit: Duration) {
    let started = tokio::time::Instant::now();
    let me = c.membership.me().to_string();
    // Everyone hears it, even when this node thinks it is the last one left: a peer that is
    // leaving at the same moment must not wait for this node.
    let announced = announce_to_peers(&c.membership, true, Duration::from_secs(1));
    let others = c
        .membership
        .current()
        .addrs()
        .iter()
        .filter(|a| **a != me)
        .count();
    if others == 0 {
        let _ = tokio::time::timeout(Duration::from_secs(2), announced).await;
        tracing::info!("last member of the cluster: deciding buffered traces here");
        return;
    }
    tracing::info!(
        peers = others,
        "leaving the cluster: handing buffered traces and decisions to the other members"
    );
    c.membership.leave();
    let _ = tokio::time::timeout(Duration::from_secs(2), announced).await;
    let mut rounds = 0u32;
    loop {
        c.router.rebalance().await;
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let buffered = stats.buffered_spans.load(Relaxed);
        let queued: u64 = c.router.peer_queues().iter().map(|q| q.bytes()).sum();
        if c.membership.current().addrs().is_empty() && queued == 0 {
            // Every other member announced its leave too (the whole cluster is stopping):
            // nobody is left to hand to.
            tracing::info!(
                buffered,
                "every other member is leaving too; deciding the rest here"
            );
            return;
        }
        if buffered <= 0 && queued == 0 {
            tracing::info!(
                rounds,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "everything this node held is with its new owners"
            );
            return;
        }
        if started.elapsed() >= limit {
            tracing::warn!(
                buffered,
                queued_bytes = queued,
                "leave took longer than its share of shutdown.timeout; deciding the rest here"
            );
            return;
        }
    }
}

/// Most peer connections open at once (a few per member).
const PEER_MAX_CONNECTIONS: usize = 4096;
/// A peer connection with no traffic (not even keep-alive pings) for this long is closed.
const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// How often a node checks whether spans a peer forwarded belong elsewhere (views disagreed
/// when they were sent) and, if so, hands them on once the views agree.
const STRAY_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Starts the DNS or Redis membership provider.
fn start_provider(
    cc: &ClusterConfig,
    membership: &Arc<MembershipHandle>,
    stop_rx: &watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let membership = membership.clone();
    let stop = stop_rx.clone();
    match cc.membership {
        MembershipKind::Static => None,
        MembershipKind::Dns => {
            let source = crate::cluster::dns::DnsSource {
                name: cc.dns_name.clone().unwrap_or_default(),
                port: cc.dns_port,
                server: cc.dns_server,
            };
            let interval = cc.dns_interval.0;
            Some(tokio::spawn(crate::cluster::dns::run(
                source, interval, membership, stop,
            )))
        }
        MembershipKind::Redis => {
            let source = crate::cluster::redis::RedisSource {
                url: cc.redis_url.clone().unwrap_or_default(),
                prefix: cc.redis_prefix.clone(),
                ttl: cc.member_ttl.0,
            };
            Some(tokio::spawn(crate::cluster::redis::run(
                source, membership, stop,
            )))
        }
    }
}

/// How long a node waits at start for its first view of the members before it opens its
/// listeners anyway (on its own, it owns every trace until the provider answers).
const FIRST_MEMBERSHIP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn tokio_stream_from(
    listener: TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((accepted, listener))
    })
}

/// Trace lookups for the admin API go to the shard that owns the trace id.
impl admin::tenants::TraceLookup for Router {
    fn lookup(
        &self,
        trace_id: crate::model::TraceId,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<Option<crate::model::TraceStatus>, admin::tenants::LookupError>,
                > + Send
                + '_,
        >,
    > {
        Box::pin(async move {
            Router::lookup(self, trace_id).await.map_err(|e| match e {
                crate::route::RouteError::Full | crate::route::RouteError::PeerFull(_) => {
                    admin::tenants::LookupError::Busy
                }
                crate::route::RouteError::Closed => admin::tenants::LookupError::Closed,
            })
        })
    }
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({key})"))
}

/// How the receive listeners treat connections: limits, timeouts and, with `[receive.tls]`,
/// the certificate (checked for rotation until `stop`).
fn receive_connections(
    receive: &crate::config::ReceiveConfig,
    stats: &Arc<Stats>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<receive::conn::ConnOptions> {
    let tls = match &receive.tls {
        Some(files) => {
            let tls = Arc::new(
                receive::tls::ServerTls::load(files, stats.clone())
                    .context("loading the [receive.tls] certificate")?,
            );
            tls.watch(stop.clone());
            tracing::info!(cert_file = %files.cert_file.display(), mtls = files.client_ca_file.is_some(), "receive listeners speak TLS");
            Some(tls)
        }
        None => None,
    };
    Ok(receive::conn::ConnOptions {
        max_connections: receive.max_connections,
        tls,
        handshake_timeout: receive
            .tls
            .as_ref()
            .map_or(Duration::from_secs(10), |t| t.handshake_timeout.0),
        idle_timeout: receive.idle_timeout.0,
    })
}

impl Running {
    /// Shuts down in tiers (stop accepting, decide everything, flush export) and waits.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.done.await;
    }
}

/// Runs until SIGTERM or SIGINT, then shuts down gracefully; SIGHUP reloads the rules.
pub async fn run_until_signal(config: Config) -> anyhow::Result<()> {
    // Handlers go in before anything listens: a SIGHUP right after start must reload, not kill.
    let signals = Signals::install();
    let running = start(config).await?;
    signals.wait(&running).await;
    tracing::info!("shutting down: deciding buffered traces and flushing exports");
    let stats = running.stats.clone();
    running.shutdown().await;
    tracing::info!(
        received = stats.spans_received.load(Relaxed),
        exported = stats.spans_exported.load(Relaxed),
        dropped_by_rules = stats.dropped(DropReason::Rule) + stats.dropped(DropReason::Sampled),
        export_overflow = stats.dropped(DropReason::ExportOverflow),
        export_failed = stats.dropped(DropReason::ExportFailed),
        shutdown_dropped = stats.dropped(DropReason::ShutdownDeadline),
        "stopped"
    );
    Ok(())
}

/// The process signals the proxy reacts to, installed before start-up.
struct Signals {
    #[cfg(unix)]
    unix: Option<[tokio::signal::unix::Signal; 3]>,
}

impl Signals {
    #[cfg(unix)]
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let unix = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => Some([term, int, hup]),
            _ => None,
        };
        Signals { unix }
    }

    #[cfg(not(unix))]
    fn install() -> Signals {
        Signals {}
    }

    /// Waits for SIGTERM or SIGINT; SIGHUP reloads the rules meanwhile.
    #[cfg(unix)]
    async fn wait(self, running: &Running) {
        let Some([mut term, mut int, mut hup]) = self.unix else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading rules");
                    if let Some(f) = running.reread_peers.clone() {
                        let _ = tokio::task::spawn_blocking(move || f()).await;
                    }
                    let rules = running.rules.clone();
                    let _ = tokio::task::spawn_blocking(move || rules.reload(Trigger::Signal)).await;
                }
            }
        }
    }

    #[cfg(not(unix))]
    async fn wait(self, _running: &Running) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
