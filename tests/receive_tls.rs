//! TLS and slow clients on the receive listeners, against the real binary on 127.0.0.1 with
//! certificates made at run time: real TLS clients (tonic over hyper-rustls, hyper-rustls for
//! OTLP/HTTP) send spans over TLS to both listeners, mTLS refuses clients without a
//! certificate, rotated files are served to new connections without a failed request, and a
//! slowloris client is cut off while a normal client is served.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use support::tls::{Issued, TestCa};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

/// Reads one sample (name with labels, as printed) from the proxy's /metrics; 0 if absent.
async fn metric(proxy: &TailsiftProcess, name: &str) -> f64 {
    let text = http_get(proxy.admin, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A client configuration trusting `ca`, presenting `client` when given.
fn client_tls(ca: &TestCa, client: Option<&Issued>) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert()).expect("CA into root store");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    match client {
        Some(c) => builder
            .with_client_auth_cert(
                vec![c.cert.clone()],
                PrivateKeyDer::Pkcs8(c.key.clone_key()),
            )
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    }
}

/// OTLP/gRPC over TLS to `addr`, on a new connection.
async fn send_grpc_tls(
    addr: SocketAddr,
    tls: ClientConfig,
    req: ExportTraceServiceRequest,
) -> Result<(), String> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http2()
        .build();
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    TraceServiceClient::new(channel)
        .export(req)
        .await
        .map(|_| ())
        .map_err(|s| format!("{}: {}", s.code(), s.message()))
}

/// OTLP/HTTP protobuf over TLS to `addr`; the status code.
async fn send_http_tls(
    addr: SocketAddr,
    tls: ClientConfig,
    req: &ExportTraceServiceRequest,
) -> Result<u16, String> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let request = http::Request::post(format!("https://{addr}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::from(req.encode_to_vec())))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    Ok(status)
}

/// The certificate the listener at `addr` serves to a new connection.
async fn served_certificate(addr: SocketAddr, tls: ClientConfig) -> CertificateDer<'static> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let name = ServerName::try_from("localhost").expect("server name");
    let stream = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a certificate")[0]
        .clone()
}

/// Copies `issued`'s files over the files the proxy reads, each by rename, as cert-manager does.
fn install(issued: &Issued, cert: &Path, key: &Path) {
    for (from, to) in [(&issued.cert_file, cert), (&issued.key_file, key)] {
        let tmp = to.with_extension("tmp");
        std::fs::copy(from, &tmp).expect("copy");
        std::fs::rename(&tmp, to).expect("rename");
    }
}

struct Setup {
    ca: TestCa,
    cert: PathBuf,
    key: PathBuf,
    backend: RecordingBackend,
    proxy: TailsiftProcess,
    first: Issued,
    _dir: tempfile::TempDir,
}

/// A proxy whose listeners speak TLS with a certificate from a fresh CA; `extra` goes into
/// `[receive.tls]`.
async fn start(extra: impl Fn(&TestCa) -> String) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&dir.path().join("ca"));
    let first = ca.server_cert(&[]);
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    install(&first, &cert, &key);
    let backend = RecordingBackend::start().await;
    let section = format!(
        "[receive.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\ncheck_interval = \"200ms\"\n{}\n",
        cert.display(),
        key.display(),
        extra(&ca)
    );
    let proxy = TailsiftProcess::start_with_rules_and(backend.grpc_addr(), KEEP_ALL_RULES, |c| {
        c.replace("[tenant]", &format!("{section}[tenant]"))
    })
    .await;
    Setup {
        ca,
        cert,
        key,
        backend,
        proxy,
        first,
        _dir: dir,
    }
}

fn trace(seed: u64) -> ExportTraceServiceRequest {
    make_request(vec![make_trace(
        trace_id_from_seed(seed),
        "acme",
        2,
        false,
        "/tls",
    )])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_sent_over_tls_to_both_listeners_arrive() {
    let s = start(|_| String::new()).await;
    send_grpc_tls(s.proxy.grpc, client_tls(&s.ca, None), trace(1))
        .await
        .expect("gRPC over TLS");
    let status = send_http_tls(s.proxy.http, client_tls(&s.ca, None), &trace(2))
        .await
        .expect("HTTP over TLS");
    assert_eq!(status, 200);
    s.backend.wait_for_spans(4, WAIT).await;
    // Plaintext is not spoken on a TLS listener.
    assert!(send_grpc(s.proxy.grpc, trace(3)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_clients_without_a_certificate_are_refused() {
    let s = start(|ca| format!("client_ca_file = \"{}\"", ca.ca_file.display())).await;
    let client = s.ca.client_cert("collector");
    send_grpc_tls(s.proxy.grpc, client_tls(&s.ca, Some(&client)), trace(1))
        .await
        .expect("a client certificate from the CA is accepted");
    assert_eq!(
        send_http_tls(s.proxy.http, client_tls(&s.ca, Some(&client)), &trace(2)).await,
        Ok(200)
    );
    assert!(
        send_grpc_tls(s.proxy.grpc, client_tls(&s.ca, None), trace(3))
            .await
            .is_err()
    );
    assert!(
        send_http_tls(s.proxy.http, client_tls(&s.ca, None), &trace(4))
            .await
            .is_err()
    );
    s.backend.wait_for_spans(4, WAIT).await;
    s.backend
        .assert_span_count_stays(4, Duration::from_millis(500))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_reach_new_connections_without_a_failed_request() {
    let s = start(|_| String::new()).await;
    let grpc = s.proxy.grpc;
    assert_eq!(
        served_certificate(grpc, client_tls(&s.ca, None)).await,
        s.first.cert
    );
    // Load: requests on fresh connections to both listeners throughout the rotation.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, http) = (stop.clone(), s.proxy.http);
        let tls = client_tls(&s.ca, None);
        tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                send_grpc_tls(grpc, tls.clone(), trace(100 + sent))
                    .await
                    .unwrap_or_else(|e| panic!("gRPC request {sent} failed: {e}"));
                let status = send_http_tls(http, tls.clone(), &trace(10_000 + sent)).await;
                assert_eq!(status, Ok(200), "HTTP request {sent}");
                sent += 1;
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = s.ca.server_cert(&[]);
    install(&second, &s.cert, &s.key);
    wait_until_served(grpc, &s.ca, &second.cert).await;
    wait_until_served(s.proxy.http, &s.ca, &second.cert).await;
    // A broken rotation keeps the certificate that works, and is counted.
    let failures = metric(&s.proxy, "tailsift_tls_reload_failures_total").await;
    std::fs::write(&s.cert, "not a certificate").unwrap();
    let start = tokio::time::Instant::now();
    while metric(&s.proxy, "tailsift_tls_reload_failures_total").await <= failures {
        assert!(start.elapsed() < WAIT, "the bad file was not noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        served_certificate(grpc, client_tls(&s.ca, None)).await,
        second.cert
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = load.await.expect("no request failed");
    assert!(sent >= 1, "load ran");
    assert!(metric(&s.proxy, "tailsift_tls_reloads_total").await >= 1.0);
    s.proxy
        .wait_for_log("receive TLS files changed but cannot be used", WAIT)
        .await;
}

async fn wait_until_served(addr: SocketAddr, ca: &TestCa, cert: &CertificateDer<'static>) {
    let start = tokio::time::Instant::now();
    while served_certificate(addr, client_tls(ca, None)).await != *cert {
        assert!(
            start.elapsed() < WAIT,
            "the new certificate was not served on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_disconnected_after_the_header_timeout_while_others_are_served() {
    let backend = RecordingBackend::start().await;
    let proxy = TailsiftProcess::start_with_rules_and(backend.grpc_addr(), KEEP_ALL_RULES, |c| {
        c.replace(
            "max_request_bytes = \"4MiB\"",
            "max_request_bytes = \"4MiB\"\nheader_read_timeout = \"2s\"\nidle_timeout = \"5s\"",
        )
    })
    .await;
    let mut slow = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let started = tokio::time::Instant::now();
    let header = b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut closed_after = None;
    for (i, byte) in header.iter().enumerate() {
        if slow.write_all(&[*byte]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        // A normal client is served meanwhile.
        if i == 1 {
            let reply = send_http(proxy.http, &trace(1), HttpEncoding::Protobuf, false).await;
            assert_eq!(reply.status.as_u16(), 200);
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_secs(1), slow.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Err(_) => {} // still open, one more byte
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never disconnected"
        );
    }
    let closed_after = closed_after.expect("the slow client was disconnected");
    assert!(
        closed_after >= Duration::from_millis(1500) && closed_after < Duration::from_secs(6),
        "disconnected after {closed_after:?}, expected about the 2s header timeout"
    );
    backend.wait_for_spans(2, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_after_the_idle_timeout() {
    let backend = RecordingBackend::start().await;
    let proxy = TailsiftProcess::start_with_rules_and(backend.grpc_addr(), KEEP_ALL_RULES, |c| {
        c.replace(
            "max_request_bytes = \"4MiB\"",
            "max_request_bytes = \"4MiB\"\nqueue_timeout = \"500ms\"\nidle_timeout = \"1s\"",
        )
    })
    .await;
    // The gRPC listener (HTTP/2 has no header timeout): a silent connection is closed.
    let mut silent = tokio::net::TcpStream::connect(proxy.grpc).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle connection was never closed");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(800) && after < Duration::from_secs(5),
        "closed after {after:?}, expected about the 1s idle timeout"
    );
    // Busy clients are unaffected.
    send_grpc(proxy.grpc, trace(1)).await.expect("served");
    backend.wait_for_spans(2, WAIT).await;
}
