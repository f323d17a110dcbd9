//! The Kubernetes client: kube's own layers, on a connection with TCP_NODELAY.
//!
//! kube's `Client::try_from(Config)` connects with hyper's default, Nagle's algorithm on. kube
//! sends exec stdin in WebSocket frames of at most 1 KiB, so a patch is several small writes:
//! the first goes out, the rest wait until the API server acknowledges it, which it delays by
//! up to 40 ms because it has nothing to send back yet. That was most of a one-file sync
//! (47 ms → 5 ms with TCP_NODELAY, measured with `tests/bench/reload`), and it hits every
//! request through the port-forwards too. kube offers no switch for it, so this builds the same
//! stack kube builds (base URI, retries, auth, extra headers, timeouts, rustls) on a connector
//! with TCP_NODELAY set, as kube's `custom_client` example does.
//!
//! The same connector also makes dead connections die: NATs and cloud load balancers forget idle
//! flows without a reset, after which a request on a pooled connection (or a long-lived exec or
//! port-forward stream) would wait for minutes. TCP keepalive probes an idle connection every
//! few seconds and TCP_USER_TIMEOUT bounds how long sent data may stay unacknowledged, so the
//! kernel closes such a connection within about 15 s, and the pool stops handing it out.

use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use kube::client::retry::RetryPolicy;
use kube::{Client, Config};
use tower::ServiceBuilder;
use tower::retry::RetryLayer;

/// Idle time before the first keepalive probe.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(3);
const KEEPALIVE_RETRIES: u32 = 3;
/// How long written data may stay unacknowledged before the kernel gives up on the connection.
#[cfg(any(target_os = "linux", target_os = "android"))]
const USER_TIMEOUT: Duration = Duration::from_secs(15);

/// A client for `config` whose connections to the API server send small writes at once.
pub fn build(config: Config) -> Result<Client> {
    // Proxies take kube's own path, which handles their connectors (and Nagle with them).
    if config.proxy_url.is_some() {
        return Client::try_from(config).context("creating the Kubernetes client");
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(KEEPALIVE_IDLE));
    http.set_keepalive_interval(Some(KEEPALIVE_INTERVAL));
    http.set_keepalive_retries(Some(KEEPALIVE_RETRIES));
    // Linux only (hyper offers it there); elsewhere keepalive alone notices a dead peer.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    http.set_tcp_user_timeout(Some(USER_TIMEOUT));
    let https = config
        .rustls_https_connector_with_connector(http)
        .context("setting up TLS for the Kubernetes API")?;
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let http_client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Builder::new(TokioExecutor::new()).build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(
            config
                .auth_layer()
                .context("setting up authentication for the Kubernetes API")?,
        )
        .layer(
            config
                .extra_headers_layer()
                .context("setting up the kubeconfig's extra headers")?,
        )
        // The auth and retry layers work on boxed errors.
        .map_err(tower::BoxError::from)
        .service(http_client);
    Ok(Client::new(service, config.default_namespace))
}
