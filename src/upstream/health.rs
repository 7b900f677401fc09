//! Active health checks: every node of every cluster, on an interval, with
//! the standard `grpc.health.v1.Health/Check`.
//!
//! A node that answers `UNIMPLEMENTED` still speaks gRPC, so it counts as up:
//! AI teams need not implement the health service to be checked. A failed
//! call (refused connection, timeout) counts as down after
//! `unhealthy_after` consecutive failures; one success brings it back.

use std::sync::Arc;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::{Cluster, Node};

/// The service name health checks ask about.
pub const SERVICE: &str = "moltgate.v1.Assistant";

/// Checks one node once: `Ok(())` when healthy, else a short reason.
pub async fn check_node(cluster: &Cluster, node: &Node) -> Result<(), &'static str> {
    let Some(channel) = node.channel() else {
        return Ok(());
    };
    let mut client = HealthClient::new(channel);
    let call = client.check(HealthCheckRequest {
        service: SERVICE.to_string(),
    });
    match tokio::time::timeout(cluster.health.timeout.0, call).await {
        Err(_) => Err("health_timeout"),
        Ok(Ok(resp)) if resp.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
        Ok(Ok(_)) => Err("not_serving"),
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => Ok(()),
        Ok(Err(_)) => Err("health_failed"),
    }
}

/// Runs checks for every node of `cluster` forever (spawn it). The first
/// round runs at once so readiness reflects reality quickly.
pub async fn run(cluster: Arc<Cluster>) {
    let mut ticker = tokio::time::interval(cluster.health.interval.0);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let checks = cluster.nodes().iter().map(|node| {
            let cluster = &cluster;
            async move {
                let result = check_node(cluster, node).await;
                cluster.set_health(node, result.is_ok(), result.err().unwrap_or("ok"));
            }
        });
        futures::future::join_all(checks).await;
    }
}
