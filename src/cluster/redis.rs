//! Redis membership: every node registers itself in one sorted set and reads the live
//! registrations back.
//!
//! `{prefix}:members` is a sorted set of advertise addresses scored by the time (Redis server
//! clock, Unix ms, so node clocks may drift) at which the registration expires. Every
//! [`POLL_EVERY`] a node reads the server time, renews its own registration to `now +
//! member_ttl`, removes the expired ones and reads the rest: those are the members. A node that
//! registers anew or deregisters publishes on `{prefix}:membership`; every node subscribes and
//! reads again at once, so joins and leaves are seen in milliseconds, crashes within
//! `member_ttl`, and polling is the backstop.
//!
//! A Redis outage keeps the last known members (traffic never stops on it) and is reported in
//! `GET /api/v1/cluster` and the metrics. After an outage every node's registration may have
//! expired; for [`REJOIN_GRACE`] after reconnecting a node only adds members, so the cluster
//! does not shrink while the others re-register. A node that leaves (SIGTERM) removes its
//! registration at once and stops renewing it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;

use super::membership::MembershipHandle;

/// How often a node renews its registration and reads the members.
pub const POLL_EVERY: Duration = Duration::from_millis(500);
/// How long after (re)connecting a node only adds members.
pub const REJOIN_GRACE: Duration = Duration::from_millis(2_500);
/// Longest one Redis command may take before the connection counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait between reconnection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// Where and how this node registers.
#[derive(Clone, Debug)]
pub struct RedisSource {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of the key and the channel.
    pub prefix: String,
    /// A registration not renewed for this long is gone.
    pub ttl: Duration,
}

impl RedisSource {
    fn key(&self) -> String {
        format!("{}:members", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}:membership", self.prefix)
    }
}

/// Why one round with Redis failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The client reported an error.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

async fn timed<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, RedisError> {
    tokio::time::timeout(CALL_TIMEOUT, f)
        .await
        .map_err(|_| RedisError::Timeout(CALL_TIMEOUT))?
        .map_err(RedisError::from)
}

/// What a round tells membership: with `grace`, only additions to `last` count.
pub fn next_members(read: Vec<String>, last: &[String], grace: bool) -> Vec<String> {
    let mut set: BTreeSet<String> = read.into_iter().collect();
    if grace {
        set.extend(last.iter().cloned());
    }
    set.into_iter().collect()
}

/// One round: renew `me`, drop expired registrations, read the live ones. Returns the
/// members and whether `me` was newly registered.
async fn round(
    conn: &mut redis::aio::MultiplexedConnection,
    source: &RedisSource,
    me: &str,
    register: bool,
) -> Result<(Vec<String>, bool), RedisError> {
    let (secs, micros): (u64, u64) = timed(redis::cmd("TIME").query_async(conn)).await?;
    let now_ms = secs * 1000 + micros / 1000;
    let expiry = now_ms + source.ttl.as_millis() as u64;
    let key = source.key();
    let mut pipe = redis::pipe();
    if register {
        pipe.cmd("ZADD").arg(&key).arg(expiry).arg(me);
    } else {
        // Leaving: make sure the registration is gone (ZREM answers 0 or 1, like ZADD).
        pipe.cmd("ZREM").arg(&key).arg(me);
    }
    let (added, _removed, members): (u64, u64, Vec<String>) = timed(
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(format!("({now_ms}"))
            .cmd("ZRANGEBYSCORE")
            .arg(&key)
            .arg(now_ms)
            .arg("+inf")
            .query_async(conn),
    )
    .await?;
    if added > 0 {
        let what = if register { "join" } else { "leave" };
        let _: u64 = timed(
            redis::cmd("PUBLISH")
                .arg(source.channel())
                .arg(format!("{what} {me}"))
                .query_async(conn),
        )
        .await?;
    }
    Ok((members, added > 0))
}

/// Removes `me` from the members and tells the others, best effort (the TTL is the backstop).
async fn deregister(client: &redis::Client, source: &RedisSource, me: &str) {
    let result = async {
        let mut conn = timed(client.get_multiplexed_async_connection()).await?;
        let _: (u64, u64) = timed(
            redis::pipe()
                .cmd("ZREM")
                .arg(source.key())
                .arg(me)
                .cmd("PUBLISH")
                .arg(source.channel())
                .arg(format!("leave {me}"))
                .query_async(&mut conn),
        )
        .await?;
        Ok::<(), RedisError>(())
    }
    .await;
    match result {
        Ok(()) => tracing::info!(advertise = me, "deregistered from redis membership"),
        Err(e) => {
            tracing::warn!(error = %e, "could not deregister from redis; the others drop this node after cluster.member_ttl")
        }
    }
}

/// Registers this node and keeps membership current until `stop`, then deregisters.
pub async fn run(
    source: RedisSource,
    membership: Arc<MembershipHandle>,
    mut stop: watch::Receiver<bool>,
) {
    let me = membership.me().to_string();
    let client = match redis::Client::open(source.url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            // Validated at start; kept total.
            membership.report_error(&format!("redis url: {e}"));
            return;
        }
    };
    let mut backoff = Duration::from_millis(250);
    loop {
        let connected = async {
            let conn = timed(client.get_multiplexed_async_connection()).await?;
            let mut pubsub = timed(client.get_async_pubsub()).await?;
            timed(pubsub.subscribe(source.channel())).await?;
            Ok::<_, RedisError>((conn, pubsub))
        };
        let attempt = tokio::select! {
            c = connected => c,
            _ = stopped(&mut stop) => return,
        };
        let (mut conn, pubsub) = match attempt {
            Ok(c) => c,
            Err(e) => {
                membership.report_error(&format!("{e}"));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped(&mut stop) => return,
                }
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        backoff = Duration::from_millis(250);
        let connected_at = Instant::now();
        let mut messages = pubsub.into_on_message();
        let mut local = membership.subscribe();
        let mut tick = tokio::time::interval(POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let failure = loop {
            tokio::select! {
                _ = tick.tick() => {}
                msg = messages.next() => {
                    if msg.is_none() {
                        break "the subscription closed".to_string();
                    }
                }
                // This node started leaving: deregister now, not at the next tick.
                _ = local.changed() => {}
                _ = stopped(&mut stop) => {
                    deregister(&client, &source, &me).await;
                    return;
                }
            }
            match round(&mut conn, &source, &me, !membership.is_leaving()).await {
                Ok((read, _)) => {
                    let grace = connected_at.elapsed() < REJOIN_GRACE;
                    let last = membership.current();
                    membership.publish(next_members(read, last.addrs(), grace));
                }
                Err(e) => break e.to_string(),
            }
        };
        membership.report_error(&failure);
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_reconnecting_a_node_only_adds_members_until_the_grace_ends() {
        let last = vec!["a:1".to_string(), "b:1".to_string()];
        assert_eq!(
            next_members(vec!["a:1".into(), "c:1".into()], &last, true),
            ["a:1", "b:1", "c:1"]
        );
        assert_eq!(
            next_members(vec!["a:1".into(), "c:1".into()], &last, false),
            ["a:1", "c:1"]
        );
    }
}
