//! Serving the HTTP APIs with limits a hostile client cannot get around: a header-read
//! timeout that is also the idle timeout of a kept-alive connection (hyper's own, with tokio's
//! timer), a cap on open connections (past it a new connection is closed at once and the cap
//! is logged, at most once a minute), and the Host check against DNS rebinding.
//!
//! `axum::serve` has neither timeout nor cap, so the accept loop is here: hyper's HTTP/1
//! connection builder serving the axum router through hyper-util's tower adapter.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::request::ApiError;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;

/// Limits of one HTTP API.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// A client must send a request's whole header within this time — the first one after
    /// connecting and each next one on a kept-alive connection — or be disconnected.
    pub header_timeout: Duration,
    /// Connections open at once; more are closed as they arrive.
    pub connections_max: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits { header_timeout: Duration::from_secs(10), connections_max: 256 }
    }
}

/// Connections refused over the cap that are closed gracefully at the same time.
pub const REFUSALS_DRAINED_MAX: usize = 64;

/// Serves `router` on `listener` with `limits` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: HttpLimits,
) -> std::io::Result<()> {
    serve_maybe_tls(listener, router, limits, None).await
}

/// [`serve`], over TLS when `tls` is given: the handshake must finish within the header
/// timeout too.
pub async fn serve_maybe_tls(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.connections_max));
    let draining = Arc::new(tokio::sync::Semaphore::new(REFUSALS_DRAINED_MAX));
    // Dropped with this future (the server stopping): every open connection then closes too,
    // instead of outliving the server on its keep-alive.
    let (_stopping, stopped) = tokio::sync::watch::channel(());
    let mut last_cap_warning: Option<tokio::time::Instant> = None;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors and the like: wait a moment rather than spin.
            Err(e) => {
                tracing::warn!("accepting an HTTP connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let now = tokio::time::Instant::now();
            if last_cap_warning.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(60)) {
                last_cap_warning = Some(now);
                tracing::warn!(
                    "HTTP connection cap of {} reached: refusing connections (first from {peer})",
                    limits.connections_max
                );
            }
            // Closed gracefully (FIN, then what the client already sent is read and dropped
            // for up to a second), so it sees the connection end rather than a reset; a flood
            // beyond REFUSALS_DRAINED_MAX is dropped at once.
            if let Ok(drain) = draining.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                    let mut stream = stream;
                    let _ = stream.shutdown().await;
                    let mut sink = [0u8; 4096];
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                    })
                    .await;
                    drop(drain);
                });
            }
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let header_timeout = limits.header_timeout;
        let mut stopped = stopped.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let builder = {
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(TokioTimer::new()).header_read_timeout(header_timeout);
                b
            };
            match acceptor {
                None => {
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = stopped.changed() => {}
                    }
                }
                Some(acceptor) => {
                    // A client that never finishes the handshake is dropped like one that
                    // never sends a header.
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(header_timeout, acceptor.accept(stream)).await
                    else {
                        drop(permit);
                        return;
                    };
                    let connection = builder.serve_connection(TokioIo::new(tls), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = stopped.changed() => {}
                    }
                }
            }
            drop(permit);
        });
    }
}

/// The Host header values a request to an API bound at `addr` may carry: the bound address,
/// `localhost` (for a loopback address) and the extra names given, each with the port. Anything
/// else is refused (421), so a page on another site cannot reach the API through a DNS name it
/// controls (DNS rebinding).
pub fn allowed_hosts(addr: SocketAddr, names: &[String]) -> Vec<String> {
    let port = addr.port();
    let mut hosts = vec![match addr {
        SocketAddr::V4(a) => format!("{}:{port}", a.ip()),
        SocketAddr::V6(a) => format!("[{}]:{port}", a.ip()),
    }];
    if addr.ip().is_loopback() {
        hosts.push(format!("localhost:{port}"));
        hosts.push(format!("127.0.0.1:{port}"));
        hosts.push(format!("[::1]:{port}"));
    }
    hosts.extend(names.iter().map(|n| format!("{n}:{port}")));
    hosts
}

/// How an HTTP API is served: its connection limits, the host names (besides its address)
/// clients may call it by, and TLS.
#[derive(Debug, Clone, Default)]
pub struct ApiOptions {
    /// Timeouts and the connection cap.
    pub limits: crate::serve::HttpLimits,
    /// Extra names for the Host check (e.g. the reception PC's name on the LAN).
    pub host_names: Vec<String>,
    /// HTTPS: required whenever the API listens beyond loopback
    /// ([`shikaku_net::tls::https_server_config`]).
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

/// The header every request that records something must carry: a browser sends a custom
/// header only to its own origin (anything else needs a CORS preflight, which these APIs never
/// grant), so a page on another site cannot write into the audit trail through the reception
/// PC's browser.
pub const CLIENT_HEADER: &str = "X-Shikaku-Client";

/// The guard in front of both APIs: the Host must be one of the API's own names (DNS
/// rebinding), and a request that records something must come from the same origin — no
/// `Sec-Fetch-Site` other than same-origin/none, no foreign `Origin`, and the
/// [`CLIENT_HEADER`].
pub async fn guard(
    hosts: Arc<Vec<String>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{header, Method, StatusCode};
    use axum::response::IntoResponse;
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "host_not_allowed",
            format!("this API answers only as {}: Host {host:?} is refused", hosts.join(", ")),
        )
        .into_response();
    }
    let path = request.uri().path();
    let records = matches!(
        (request.method(), path),
        (&Method::GET, "/v1/check")
            | (&Method::POST, "/v1/login")
            | (&Method::POST, "/v1/logout")
            | (&Method::POST, "/v1/staff/disable")
            | (&Method::POST, "/v1/declarations")
            | (&Method::POST, "/fhir/CoverageEligibilityRequest")
            | (&Method::POST, "/v1/consents")
            | (&Method::POST, "/v1/import")
    );
    if records {
        let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let foreign_origin = origin.is_some_and(|o| {
            let authority = o.split_once("://").map_or(o, |(_, rest)| rest);
            !hosts.iter().any(|h| h.eq_ignore_ascii_case(authority))
        });
        if site.is_some_and(|s| s != "same-origin" && s != "none") || foreign_origin {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_site",
                format!("{path} records in the audit trail: it answers only requests from its own pages and programs"),
            )
            .into_response();
        }
        if headers.get(CLIENT_HEADER).is_none_or(|v| v.is_empty()) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "missing_client_header",
                format!("{path} records in the audit trail: send the header {CLIENT_HEADER} (the reception page and shikaku's commands do)"),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// `router` behind [`guard`], served on `listener` with `options`.
pub async fn serve_guarded(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    options: &ApiOptions,
) -> std::io::Result<()> {
    let hosts = Arc::new(crate::serve::allowed_hosts(listener.local_addr()?, &options.host_names));
    let router = router
        .layer(axum::middleware::from_fn(move |request, next| guard(hosts.clone(), request, next)));
    crate::serve::serve_maybe_tls(listener, router, options.limits.clone(), options.tls.clone())
        .await
}
