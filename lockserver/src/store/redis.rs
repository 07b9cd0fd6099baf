//! The Redis store: transactions as JSON values, locks in one hash, timers and the
//! phase-2 schedule in sorted sets, all changed by Lua scripts so that several
//! lockserver processes can share one Redis.
//!
//! Owns: the keys under its prefix. Never keeps coordinator state in process memory
//! (any lockserver may serve any transaction). Invariant: a transaction's value and
//! its locks change together in one script, guarded by compare-and-set on the value
//! read, so the same `core::txn::plan` rules apply as in the embedded store.
//!
//! Keys (`P` = prefix): `P:g:<xid>` transaction JSON; `P:locks` hash lock key → xid;
//! `P:globals` zset xid by begin time; `P:deadlines` zset of `Begin` xids by deadline;
//! `P:finished` zset of finished xids by end time; `P:p2` zset xid by next phase-2 attempt.

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::{Applied, Counts, Store};
use crate::core::clock::Millis;
use crate::core::locks::LockKey;
use crate::core::txn::{self, Command, Global, Limits, Record, Work, Xid};
use crate::core::{Before, Effect, effects_of};
use crate::error::{Error, Result};

/// Bound on each Redis round trip (and on connecting).
const REDIS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How often `apply` re-reads and retries after losing a compare-and-set race.
const MAX_CAS_ATTEMPTS: usize = 32;

/// KEYS: g, locks, deadlines, finished, p2, globals.
/// ARGV: xid, expected ('' = absent), new ('' = delete), n_acquire, n_release,
/// deadline, finished, p2, begun, then acquire keys, then release keys.
/// A score argument of '' removes the member, 'keep' leaves it, a number sets it.
const CAS: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then cur = '' end
if cur ~= ARGV[2] then return {'stale'} end
local xid = ARGV[1]
local na = tonumber(ARGV[4])
local nr = tonumber(ARGV[5])
for i = 1, na do
  local h = redis.call('HGET', KEYS[2], ARGV[9 + i])
  if h and h ~= xid then return {'conflict', ARGV[9 + i], h} end
end
for i = 1, na do redis.call('HSET', KEYS[2], ARGV[9 + i], xid) end
for i = 1, nr do
  local k = ARGV[9 + na + i]
  if redis.call('HGET', KEYS[2], k) == xid then redis.call('HDEL', KEYS[2], k) end
end
if ARGV[3] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[3]) end
local sets = {{KEYS[3], ARGV[6]}, {KEYS[4], ARGV[7]}, {KEYS[5], ARGV[8]}, {KEYS[6], ARGV[9]}}
for _, s in ipairs(sets) do
  if s[2] == '' then redis.call('ZREM', s[1], xid)
  elseif s[2] ~= 'keep' then redis.call('ZADD', s[1], s[2], xid) end
end
return {'ok'}
"#;

/// KEYS: p2. ARGV: now, lease_until, limit. Claims due members by pushing them out.
const CLAIM: &str = r#"
local xs = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, x in ipairs(xs) do redis.call('ZADD', KEYS[1], ARGV[2], x) end
return xs
"#;

/// Drops a claimed schedule entry whose transaction had no work, unless its score
/// moved since the claim set it (KEYS[1] the schedule, ARGV[1] the xid, ARGV[2] the
/// claim's lease): work scheduled meanwhile (an operator's retry, another lockserver's
/// decision) keeps its entry.
const DROP_IDLE: &str = r#"
local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if at and tonumber(at) == tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"#;

/// The connection every call goes through, each command bounded by `REDIS_TIMEOUT`:
/// the manager's response timeout does not cover the wait for its reconnection (with
/// retries and backoff) after Redis went away, and a caller waited over a minute.
#[derive(Clone)]
struct BoundedConnection(ConnectionManager);

/// `command`, failed as timed out past `REDIS_TIMEOUT`.
fn bounded<'a, T: 'a>(
    command: impl Future<Output = redis::RedisResult<T>> + Send + 'a,
) -> redis::RedisFuture<'a, T> {
    Box::pin(async move {
        tokio::time::timeout(REDIS_TIMEOUT, command)
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer from Redis",
                ))
            })?
    })
}

impl redis::aio::ConnectionLike for BoundedConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        bounded(self.0.req_packed_command(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        bounded(self.0.req_packed_commands(cmd, offset, count))
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// Coordinator state in Redis, shareable by several lockservers.
pub struct RedisStore {
    conn: BoundedConnection,
    prefix: String,
    limits: Limits,
    cas: Script,
    claim: Script,
    drop_idle: Script,
}

fn decode(s: &str) -> Result<Global> {
    serde_json::from_str(s).map_err(|_| Error::Corrupt {
        what: "transaction value in Redis does not decode",
    })
}

fn score(v: Option<Millis>) -> String {
    v.map(|s| s.to_string()).unwrap_or_default()
}

/// Logs a warning when Redis would lose an acknowledged decision in a crash: the store
/// is as durable as the server's `appendonly` and `appendfsync`. A server that does not
/// answer CONFIG (renamed or forbidden, as managed services do) is left unchecked.
async fn warn_unless_durable(conn: &mut BoundedConnection) {
    let setting = async |conn: &mut BoundedConnection, name: &str| -> Option<String> {
        let pair: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(conn)
            .await
            .ok()?;
        pair.into_iter().nth(1)
    };
    let appendonly = setting(conn, "appendonly").await;
    let appendfsync = setting(conn, "appendfsync").await;
    if let (Some(appendonly), Some(appendfsync)) = (appendonly, appendfsync)
        && (appendonly != "yes" || appendfsync != "always")
    {
        tracing::warn!(
            %appendonly,
            %appendfsync,
            "Redis may lose acknowledged global decisions in a crash: run it with appendonly yes and appendfsync always"
        );
    }
}

impl RedisStore {
    /// Connects to `url`; every key goes under `prefix`.
    pub async fn open(url: &str, prefix: &str, limits: Limits) -> Result<Self> {
        let client = redis::Client::open(url)?;
        // Every Redis call is bounded; a hung Redis surfaces as a (retryable) error.
        // Reconnection gives up within seconds (the next call tries again), so that a
        // Redis that comes back is used at once.
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(REDIS_TIMEOUT)
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_number_of_retries(2)
            .set_max_delay(1_000);
        // The manager retries its first connection for minutes by default: a Redis
        // that cannot be reached at start is an error the operator sees at once.
        let conn = tokio::time::timeout(
            REDIS_TIMEOUT * 2,
            ConnectionManager::new_with_config(client, cfg),
        )
        .await
        .map_err(|_| Error::Timeout {
            op: "connecting to the Redis store (is it running, and is store.url right?)",
        })??;
        let conn = BoundedConnection(conn);
        warn_unless_durable(&mut conn.clone()).await;
        Ok(RedisStore {
            conn,
            prefix: prefix.to_string(),
            limits,
            cas: Script::new(CAS),
            claim: Script::new(CLAIM),
            drop_idle: Script::new(DROP_IDLE),
        })
    }

    fn key(&self, what: &str) -> String {
        format!("{}:{what}", self.prefix)
    }
    fn gkey(&self, xid: &Xid) -> String {
        format!("{}:g:{xid}", self.prefix)
    }

    async fn rolling_back(&self, xid: &Xid) -> Result<bool> {
        let v: Option<String> = self.conn.clone().get(self.gkey(xid)).await?;
        Ok(match v {
            Some(s) => decode(&s)?.status.is_rolling_back(),
            None => false,
        })
    }

    /// One compare-and-set attempt; `None` when another writer got there first.
    async fn try_apply(&self, cmd: &Command, now: Millis) -> Result<Option<Applied>> {
        let xid = cmd.xid();
        let mut conn = self.conn.clone();
        let cur: Option<String> = conn.get(self.gkey(xid)).await?;
        let g = cur.as_deref().map(decode).transpose()?;
        let before = Before::of(g.as_ref());
        let (records, reply) = txn::plan(g.as_ref(), cmd, now, &self.limits)?;
        if records.is_empty() {
            return Ok(Some(Applied {
                reply,
                effects: vec![],
            }));
        }
        let mut after = g.clone();
        for r in &records {
            match r {
                Record::Begin { xid, at, deadline } => {
                    after = Some(Global::begin(xid.clone(), *at, *deadline))
                }
                Record::Forget { .. } => after = None,
                r => after.iter_mut().for_each(|a| a.apply(r)),
            }
        }
        let effects = effects_of(xid, &before, after.as_ref(), true);
        let acquire: &[LockKey] = match cmd {
            Command::Register { keys, .. } => keys,
            _ => &[],
        };
        let releases = effects
            .iter()
            .any(|e| matches!(e, Effect::LocksReleased { .. }))
            || after.is_none();
        let release: Vec<&LockKey> = if releases {
            g.iter().flat_map(|g| g.keys()).collect()
        } else {
            vec![]
        };
        let p2 = if effects
            .iter()
            .any(|e| matches!(e, Effect::Phase2Due { .. }))
        {
            now.to_string()
        } else if after.as_ref().is_some_and(|a| !a.pending_work().is_empty()) {
            "keep".into()
        } else {
            String::new()
        };
        let new = after
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|_| Error::Corrupt {
                what: "transaction does not serialize",
            })?;
        let a = after.as_ref();
        let mut inv = self.cas.key(self.gkey(xid));
        inv.key(self.key("locks"))
            .key(self.key("deadlines"))
            .key(self.key("finished"))
            .key(self.key("p2"))
            .key(self.key("globals"));
        inv.arg(xid.as_str())
            .arg(cur.unwrap_or_default())
            .arg(new.unwrap_or_default());
        inv.arg(acquire.len()).arg(release.len());
        inv.arg(score(
            a.filter(|g| g.status == txn::GlobalStatus::Begin)
                .map(|g| g.deadline),
        ));
        inv.arg(score(
            a.filter(|g| g.status.is_finished()).map(|g| g.updated_at),
        ));
        inv.arg(p2).arg(score(a.map(|g| g.begun_at)));
        for k in acquire {
            inv.arg(k.as_str());
        }
        for k in release {
            inv.arg(k.as_str());
        }
        let res: Vec<String> = inv.invoke_async(&mut conn).await?;
        match res.first().map(String::as_str) {
            Some("ok") => Ok(Some(Applied { reply, effects })),
            Some("stale") => Ok(None),
            Some("conflict") if res.len() == 3 => {
                let key = LockKey::parse(&res[1])?;
                let holder = Xid::parse(&res[2])?;
                let holder_rolling_back = self.rolling_back(&holder).await?;
                Err(Error::LockConflict {
                    key,
                    holder,
                    holder_rolling_back,
                })
            }
            _ => Err(Error::Corrupt {
                what: "unexpected reply from the CAS script",
            }),
        }
    }
}

impl Store for RedisStore {
    async fn apply(&self, cmd: Command, now: Millis) -> Result<Applied> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            if let Some(a) = self.try_apply(&cmd, now).await? {
                return Ok(a);
            }
        }
        Err(Error::Contention {
            xid: cmd.xid().clone(),
        })
    }

    async fn settled(&self) -> Result<()> {
        // Each call is durable once Redis answers it (as its appendfsync makes it).
        Ok(())
    }

    async fn global(&self, xid: &Xid) -> Result<Option<Global>> {
        let v: Option<String> = self.conn.clone().get(self.gkey(xid)).await?;
        v.as_deref().map(decode).transpose()
    }

    async fn globals(&self, limit: usize) -> Result<Vec<Global>> {
        let mut conn = self.conn.clone();
        // All of them (live and those finished within the retention), for the live ones
        // to come first: the set is ordered by begin time only.
        let xids: Vec<String> = conn.zrange(self.key("globals"), 0, -1).await?;
        let mut globals = Vec::with_capacity(xids.len());
        for chunk in xids.chunks(1_000) {
            let keys: Vec<String> = chunk
                .iter()
                .map(|x| format!("{}:g:{x}", self.prefix))
                .collect();
            let vals: Vec<Option<String>> =
                redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
            for val in vals.into_iter().flatten() {
                globals.push(decode(&val)?);
            }
        }
        // Stable: each group stays in begin-time order.
        globals.sort_by_key(|g: &Global| g.status.is_finished());
        globals.truncate(limit);
        Ok(globals)
    }

    async fn locks(&self, limit: usize) -> Result<Vec<(LockKey, Xid)>> {
        let mut conn = self.conn.clone();
        let mut out = Vec::new();
        let len: usize = conn.hlen(self.key("locks")).await?;
        if len <= limit {
            // One HGETALL is an atomic snapshot; HSCAN pages are not.
            let all: Vec<(String, String)> = conn.hgetall(self.key("locks")).await?;
            for (k, x) in all {
                out.push((LockKey::parse(&k)?, Xid::parse(&x)?));
            }
            out.sort();
            return Ok(out);
        }
        let mut cursor: u64 = 0;
        loop {
            let (next, kv): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(self.key("locks"))
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            for (k, x) in kv {
                out.push((LockKey::parse(&k)?, Xid::parse(&x)?));
            }
            cursor = next;
            if cursor == 0 || out.len() >= limit {
                break;
            }
        }
        out.truncate(limit);
        out.sort();
        Ok(out)
    }

    async fn first_held(&self, keys: &[LockKey]) -> Result<Option<(LockKey, Xid)>> {
        if keys.is_empty() {
            return Ok(None);
        }
        let mut conn = self.conn.clone();
        let names: Vec<&str> = keys.iter().map(LockKey::as_str).collect();
        let holders: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.key("locks"))
            .arg(&names)
            .query_async(&mut conn)
            .await?;
        for (k, h) in keys.iter().zip(holders) {
            if let Some(h) = h {
                return Ok(Some((k.clone(), Xid::parse(&h)?)));
            }
        }
        Ok(None)
    }

    async fn due(&self, now: Millis, retention_ms: u64, limit: usize) -> Result<Vec<Command>> {
        let mut conn = self.conn.clone();
        let expired: Vec<String> = conn
            .zrangebyscore_limit(self.key("deadlines"), "-inf", now, 0, limit as isize)
            .await?;
        let cutoff = now.saturating_sub(retention_ms);
        let mut old: Vec<String> = conn
            .zrangebyscore_limit(self.key("finished"), "-inf", cutoff, 0, limit as isize)
            .await?;
        let finished: usize = conn.zcard(self.key("finished")).await?;
        let excess = finished.saturating_sub(self.limits.max_finished).min(limit);
        if excess > old.len() {
            old = conn
                .zrange(self.key("finished"), 0, excess as isize - 1)
                .await?;
        }
        let mut out = Vec::new();
        for x in expired {
            out.push(Command::Timeout {
                xid: Xid::parse(&x)?,
            });
        }
        for x in old {
            out.push(Command::Forget {
                xid: Xid::parse(&x)?,
            });
        }
        out.truncate(limit);
        Ok(out)
    }

    async fn claim_phase2(&self, now: Millis, lease_ms: u64, limit: usize) -> Result<Vec<Work>> {
        let mut conn = self.conn.clone();
        let lease_until = now.saturating_add(lease_ms);
        let xids: Vec<String> = self
            .claim
            .key(self.key("p2"))
            .arg(now)
            .arg(lease_until)
            .arg(limit)
            .invoke_async(&mut conn)
            .await?;
        let mut out = Vec::new();
        for x in xids {
            let xid = Xid::parse(&x)?;
            let work = self
                .global(&xid)
                .await?
                .map(|g| g.pending_work())
                .unwrap_or_default();
            if work.is_empty() {
                // Not a plain ZREM: work scheduled since the read above must stay due.
                let _: i64 = self
                    .drop_idle
                    .key(self.key("p2"))
                    .arg(&x)
                    .arg(lease_until)
                    .invoke_async(&mut conn)
                    .await?;
            }
            out.extend(work);
        }
        Ok(out)
    }

    async fn schedule_phase2(&self, xid: &Xid, at: Millis) -> Result<()> {
        let _: () = self
            .conn
            .clone()
            .zadd(self.key("p2"), xid.as_str(), at)
            .await?;
        Ok(())
    }

    async fn counts(&self) -> Result<Counts> {
        let mut conn = self.conn.clone();
        let (all, finished, locks): (u64, u64, u64) = redis::pipe()
            .zcard(self.key("globals"))
            .zcard(self.key("finished"))
            .hlen(self.key("locks"))
            .query_async(&mut conn)
            .await?;
        Ok(Counts {
            active: all.saturating_sub(finished),
            locks,
        })
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}
