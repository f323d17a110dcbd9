//! Connecting to the cluster: the kubeconfig (or in-cluster) configuration, a client that is
//! checked to answer, and the session's [`Connection`], which can be renewed.

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;

use crate::error::ClusterError;

/// How long the API server may take to answer the first request.
const FIRST_ANSWER: Duration = Duration::from_secs(30);

/// The kube client of a session, and how to make a new one. After a connection went silent,
/// its pooled siblings are likely dead too (a NAT forgets them all at once): after a lost
/// session, [`Connection::renew`] gives the next one a client with an empty pool, so it dials
/// a new connection.
pub struct Connection {
    config: kube::Config,
    pub client: Client,
    pub namespace: String,
}

impl Connection {
    /// Pods in the session's namespace, on the current client.
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Replace the client with a new one (a new connection pool).
    pub fn renew(&mut self) -> Result<()> {
        self.client = crate::cluster::client::build(self.config.clone())?;
        Ok(())
    }
}

/// Connect with the given (or current) kubeconfig context, checking that the API server
/// answers. `namespace` defaults to the context's.
pub async fn connect(context: Option<&str>, namespace: Option<&str>) -> Result<Connection> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(String::from),
        ..Default::default()
    };
    let config = match kube::Config::from_kubeconfig(&options).await {
        Ok(c) => c,
        Err(e) if context.is_none() => {
            kube::Config::incluster().map_err(|_| ClusterError::NoKubeconfig(e))?
        }
        Err(source) => {
            return Err(ClusterError::Context {
                context: context.unwrap_or_default().to_string(),
                source,
            }
            .into());
        }
    };
    let namespace = namespace
        .map(String::from)
        .unwrap_or_else(|| config.default_namespace.clone());
    let server = config.cluster_url.to_string();
    let client = crate::cluster::client::build(config.clone())?;
    let answered = tokio::time::timeout(FIRST_ANSWER, client.apiserver_version()).await;
    let unreachable = |source: anyhow::Error| ClusterError::Unreachable {
        server: server.clone(),
        source,
    };
    match answered {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(unreachable(e.into()).into()),
        Err(_) => {
            return Err(unreachable(anyhow::anyhow!(
                "no answer within {}s",
                FIRST_ANSWER.as_secs()
            ))
            .into());
        }
    }
    Ok(Connection {
        config,
        client,
        namespace,
    })
}
