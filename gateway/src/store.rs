//! The shared store: Redis, for state that every gateway instance must see (shared rate
//! limits, the aggregates' cached fallbacks). Every call is bounded by `timeout_ms`; a dead Redis makes
//! calls fail fast, never hang a request, and the connection comes back by itself.

use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

pub struct RedisStore {
    client: redis::Client,
    timeout: Duration,
    conn: Mutex<Option<ConnectionManager>>,
    /// Milliseconds of the process clock before which no new connection is attempted.
    retry_at_ms: AtomicU64,
}

/// Between two failed connection attempts.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

impl RedisStore {
    /// Parse the URL; nothing is connected until the first call.
    pub fn new(url: &str, timeout: Duration) -> Result<RedisStore, String> {
        // The URL may hold a password: the error does not repeat it.
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        Ok(RedisStore {
            client,
            timeout,
            conn: Mutex::new(None),
            retry_at_ms: AtomicU64::new(0),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, String> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let now = crate::clock::now_ms();
        if now < self.retry_at_ms.load(Ordering::Relaxed) {
            return Err("redis unavailable".into());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        match tokio::time::timeout(
            self.timeout,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        {
            Ok(Ok(c)) => {
                *slot = Some(c.clone());
                Ok(c)
            }
            Ok(Err(e)) => {
                self.pause(now);
                Err(format!("redis: {e}"))
            }
            Err(_) => {
                self.pause(now);
                Err("redis: connect timed out".into())
            }
        }
    }

    fn pause(&self, now_ms: u64) {
        self.retry_at_ms.store(
            now_ms + RECONNECT_PAUSE.as_millis() as u64,
            Ordering::Relaxed,
        );
    }

    /// One call on the shared connection, bounded by the timeout.
    async fn bounded<T, F>(&self, call: impl FnOnce(ConnectionManager) -> F) -> Result<T, String>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.connection().await?;
        match tokio::time::timeout(self.timeout, call(conn)).await {
            Ok(r) => r.map_err(|e| format!("redis: {e}")),
            Err(_) => Err("redis: timed out".into()),
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, String> {
        self.bounded(|mut conn| async move { cmd.query_async::<T>(&mut conn).await })
            .await
    }

    /// Run a Lua script by its SHA (Redis loads it on the first call, and again after a
    /// restart); the whole call is bounded by the timeout.
    pub async fn eval(
        &self,
        script: &redis::Script,
        key: &str,
        args: &[u64],
    ) -> Result<Vec<i64>, String> {
        let mut call = script.key(key);
        for a in args {
            call.arg(*a);
        }
        self.bounded(|mut conn| async move { call.invoke_async::<Vec<i64>>(&mut conn).await })
            .await
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.run(redis::cmd("GET").arg(key).clone()).await
    }

    pub async fn set_ex(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), String> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value).arg("EX").arg(ttl.as_secs().max(1));
        self.run::<()>(cmd).await
    }
}
