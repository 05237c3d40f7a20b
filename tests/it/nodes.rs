//! Redis Cluster and Sentinel setups on loopback, every node a `redis-server` process of the
//! test itself: [`RedisCluster`] (primaries with replicas, failing over in seconds) and
//! [`Sentinels`] (a primary, its replica and three sentinels).
//!
//! Every port comes from [`free_port`]. A setup keeps its config files and one log per process
//! in a temporary directory named after the pid and a counter; it is removed on drop, or kept
//! (and its path printed) when the test panicked. A wait that times out panics with what it
//! observed last and the tail of the logs.
//!
//! The cluster and sentinel suites (`cluster.rs`, `sentinel.rs`) check what a setup promises
//! as they use it: the primaries, a failover, a demoted primary's role.
//!
//! Timings are shortened for tests: cluster node timeout 1 s; sentinel down-after 500 ms,
//! failover timeout 2 s, and (through `SENTINEL DEBUG`) INFO every 500 ms and hello messages
//! every 250 ms instead of 10 s and 2 s.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// The pause between two looks while waiting.
const POLL: Duration = Duration::from_millis(20);
/// How long starting a whole setup may take.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Connect, read and write timeout of the harness's own probes.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Connect, read and write timeout of the connections handed to tests.
const CONN_TIMEOUT: Duration = Duration::from_secs(5);
const SLOTS: u64 = 16384;
const NODE_TIMEOUT_MS: u64 = 1000;
const DOWN_AFTER_MS: u64 = 500;
const FAILOVER_TIMEOUT_MS: u64 = 2000;
/// Lines of each log shown when a wait fails.
const LOG_LINES: usize = 15;
const INSTALL: &str = "The tests need redis-server and redis-cli on PATH: \
                       `apt-get install redis-server` (Debian/Ubuntu) or `brew install redis` (macOS)";

/// A free TCP port on 127.0.0.1 (bind to port 0, read it, release it).
///
/// Another process may take it before it is used; [`RedisCluster`] and [`Sentinels`] notice a
/// lost race (the server exits, or someone else answers) and start again on fresh ports.
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind a free loopback port")
        .port()
}

/// What a node says it is (`ROLE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A primary.
    Master,
    /// A replica of the primary on `master_port`; `state` is its link: `connect`, `connecting`,
    /// `sync` or `connected`.
    Replica { master_port: u16, state: String },
    /// A sentinel.
    Sentinel,
}

/// Asks the node behind `conn` for its `ROLE`.
pub fn role(conn: &mut redis::Connection) -> Result<Role, String> {
    let reply: Vec<redis::Value> = redis::cmd("ROLE")
        .query(conn)
        .map_err(|e| format!("ROLE: {e}"))?;
    let field = |i: usize| reply.get(i).and_then(value_text);
    match field(0).as_deref() {
        Some("master") => Ok(Role::Master),
        Some("sentinel") => Ok(Role::Sentinel),
        Some("slave") => Ok(Role::Replica {
            master_port: field(2)
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("ROLE without a primary port: {reply:?}"))?,
            state: field(3).unwrap_or_default(),
        }),
        _ => Err(format!("unexpected ROLE reply: {reply:?}")),
    }
}

fn value_text(value: &redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        redis::Value::SimpleString(text) => Some(text.clone()),
        redis::Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A Redis Cluster on loopback: `primaries` primaries with `replicas` replicas each, every node a
/// `redis-server` process of this test (TCP on 127.0.0.1, its cluster bus on a port of its own,
/// node timeout 1 s, no persistence), created with `redis-cli --cluster create` and waited on
/// until every node reports `cluster_state:ok`, all 16384 slots are served and every replica
/// has synced. Killed and cleaned on drop.
pub struct RedisCluster {
    nodes: Vec<Server>,
    primaries: usize,
    replicas: usize,
    dir: TempDir,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster and waits until it is healthy.
    pub fn start(primaries: usize, replicas: usize) -> Self {
        assert!(
            primaries >= 3,
            "redis-cli --cluster create needs at least 3 primaries, got {primaries}"
        );
        let dir = TempDir::new("cluster");
        let nodes = (0..primaries * (1 + replicas))
            .map(|i| {
                let node_dir = dir.path.join(format!("node-{i}"));
                fs::create_dir_all(&node_dir).expect("create a cluster node directory");
                let config = node_dir.join("nodes.conf");
                Server::start(
                    format!("cluster node {i}"),
                    dir.path.join(format!("node-{i}.log")),
                    2,
                    |ports| {
                        // A start that lost a port race may have written its node id already.
                        let _ = fs::remove_file(&config);
                        let mut args = strings(&[
                            "--port",
                            &ports[0].to_string(),
                            "--bind",
                            "127.0.0.1",
                            "--cluster-enabled",
                            "yes",
                            "--cluster-port",
                            &ports[1].to_string(),
                            "--cluster-node-timeout",
                            &NODE_TIMEOUT_MS.to_string(),
                            // Any replica may take over, however long its link was down.
                            "--cluster-replica-validity-factor",
                            "0",
                            // The default waits 5 s before a full sync.
                            "--repl-diskless-sync-delay",
                            "0",
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                        ]);
                        args.extend(["--cluster-config-file".into(), path_text(&config)]);
                        args.extend(["--dir".into(), path_text(&node_dir)]);
                        args
                    },
                )
            })
            .collect();
        let cluster = Self {
            nodes,
            primaries,
            replicas,
            dir,
        };
        cluster.create();
        if let Err(seen) = poll(START_TIMEOUT, || cluster.health(true)) {
            panic!(
                "the cluster did not become healthy in {START_TIMEOUT:?}. Last seen:\n{seen}\n{}",
                cluster.logs()
            );
        }
        cluster
    }

    fn create(&self) {
        let log_path = self.dir.path.join("cluster-create.log");
        let log = File::create(&log_path).expect("create the redis-cli log");
        let mut child = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", &self.replicas.to_string()])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-cli ({e}). {INSTALL}"));
        let outcome = poll(START_TIMEOUT, || match child.try_wait() {
            Ok(Some(status)) => Ok(status),
            Ok(None) => Err("still running".to_owned()),
            Err(e) => Err(e.to_string()),
        });
        let status: Result<ExitStatus, String> = outcome;
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => panic!(
                "redis-cli --cluster create failed ({status})\n{}\n{}",
                tail("redis-cli", &log_path),
                self.logs()
            ),
            Err(seen) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis-cli --cluster create did not finish in {START_TIMEOUT:?} ({seen})\n{}\n{}",
                    tail("redis-cli", &log_path),
                    self.logs()
                );
            }
        }
    }

    /// `redis://127.0.0.1:port` of every node started, killed ones included (a cluster client
    /// skips seed nodes it cannot reach).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| url(n.port)).collect()
    }

    /// Ports of the nodes that are primaries now, sorted, as a live node sees it (`CLUSTER
    /// NODES`, leaving out nodes flagged `fail`, `handshake` or `noaddr`).
    pub fn primaries(&self) -> Vec<u16> {
        let nodes = self.ask("CLUSTER NODES", cluster_nodes);
        let mut ports: Vec<u16> = nodes
            .iter()
            .filter(|n| n.is_primary())
            .map(|n| n.port)
            .collect();
        ports.sort_unstable();
        ports
    }

    /// The port of the primary serving `key`'s hash slot now (`CLUSTER KEYSLOT`, `CLUSTER
    /// NODES`).
    pub fn primary_for(&self, key: &str) -> u16 {
        let (slot, nodes) = self.ask("CLUSTER KEYSLOT and NODES", |conn| {
            let slot: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query(conn)?;
            Ok((slot, cluster_nodes(conn)?))
        });
        nodes
            .iter()
            .find(|n| n.is_primary() && n.serves(slot))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no primary serves slot {slot} of {key:?}: {nodes:#?}"))
    }

    /// A plain (not cluster-aware) connection to the node on `port`.
    pub fn conn(&self, port: u16) -> redis::Connection {
        connect(port, CONN_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to cluster node 127.0.0.1:{port}: {e}"))
    }

    /// Kills (SIGKILL) the node on `port`.
    pub fn kill(&mut self, port: u16) {
        let ports: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}; the nodes are {ports:?}"))
            .kill();
    }

    /// Waits until the surviving nodes agree the cluster is ok again: each reports
    /// `cluster_state:ok`, all slots are served by live primaries that every survivor names
    /// alike (a replica of each killed primary was promoted), and live replicas have synced.
    /// Panics after `timeout` with what it saw and the logs.
    pub fn wait_healthy(&self, timeout: Duration) {
        if let Err(seen) = poll(timeout, || self.health(false)) {
            panic!(
                "the cluster did not recover in {timeout:?}. Last seen:\n{seen}\n{}",
                self.logs()
            );
        }
    }

    /// Keys per primary (`DBSIZE` of each current primary), for checking that keys spread over
    /// every primary.
    pub fn keys_per_primary(&self) -> Vec<(u16, u64)> {
        self.primaries()
            .into_iter()
            .map(|port| {
                let keys: u64 = redis::cmd("DBSIZE")
                    .query(&mut self.conn(port))
                    .unwrap_or_else(|e| panic!("DBSIZE on 127.0.0.1:{port}: {e}"));
                (port, keys)
            })
            .collect()
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.port)
            .collect()
    }

    /// Runs `query` on the first live node that answers it.
    fn ask<T>(
        &self,
        what: &str,
        mut query: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> T {
        let mut errors = Vec::new();
        for port in self.live_ports() {
            match connect(port, PROBE_TIMEOUT).and_then(|mut conn| query(&mut conn)) {
                Ok(answer) => return answer,
                Err(e) => errors.push(format!("{port}: {e}")),
            }
        }
        panic!("no live cluster node answered {what}: {errors:?}");
    }

    /// `Ok` when the live nodes agree the cluster is whole; otherwise what is still wrong.
    /// `initial` also asks that every node knows every other one, unflagged.
    fn health(&self, initial: bool) -> Result<(), String> {
        let live = self.live_ports();
        let mut problems = Vec::new();
        let mut tables = Vec::new();
        for &port in &live {
            let mut conn = match connect(port, PROBE_TIMEOUT) {
                Ok(conn) => conn,
                Err(e) => {
                    problems.push(format!("{port}: cannot connect: {e}"));
                    continue;
                }
            };
            let observed = (|| {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn)?;
                let nodes = cluster_nodes(&mut conn)?;
                let replication = info_section(&mut conn, "replication")?;
                Ok::<_, redis::RedisError>((fields(&info), nodes, replication))
            })();
            let (info, nodes, replication) = match observed {
                Ok(observed) => observed,
                Err(e) => {
                    problems.push(format!("{port}: {e}"));
                    continue;
                }
            };
            let field = |name: &str| info.get(name).map_or("?", String::as_str);
            if field("cluster_state") != "ok" || field("cluster_slots_ok") != "16384" {
                problems.push(format!(
                    "{port}: cluster_state:{} slots_assigned:{} slots_ok:{} slots_pfail:{} slots_fail:{}",
                    field("cluster_state"),
                    field("cluster_slots_assigned"),
                    field("cluster_slots_ok"),
                    field("cluster_slots_pfail"),
                    field("cluster_slots_fail"),
                ));
            }
            let table = slot_table(&nodes);
            let served: u64 = table.iter().map(|&(s, e, _)| u64::from(e - s) + 1).sum();
            if served != SLOTS {
                problems.push(format!("{port}: primaries serve {served} slots"));
            }
            for &(start, end, owner) in &table {
                if !live.contains(&owner) {
                    problems.push(format!(
                        "{port}: slots {start}-{end} still belong to {owner}, which was killed"
                    ));
                }
            }
            if replication.get("role").map(String::as_str) == Some("slave")
                && replication.get("master_link_status").map(String::as_str) != Some("up")
            {
                problems.push(format!(
                    "{port}: replica of {:?}, link {:?}",
                    replication.get("master_port"),
                    replication.get("master_link_status")
                ));
            }
            if initial {
                let expected = self.nodes.len();
                let replicas = nodes.iter().filter(|n| n.has("slave")).count();
                let odd: Vec<String> = nodes
                    .iter()
                    .filter(|n| {
                        n.link != "connected"
                            || n.flags
                                .iter()
                                .any(|f| !matches!(f.as_str(), "myself" | "master" | "slave"))
                    })
                    .map(|n| format!("{} {} {}", n.port, n.flags.join(","), n.link))
                    .collect();
                if nodes.len() != expected
                    || replicas != self.primaries * self.replicas
                    || !odd.is_empty()
                {
                    problems.push(format!(
                        "{port}: knows {} of {expected} nodes, {replicas} replicas, not ready: {odd:?}",
                        nodes.len()
                    ));
                }
            }
            tables.push((port, table));
        }
        if tables.windows(2).any(|pair| pair[0].1 != pair[1].1) {
            let owners: Vec<String> = tables
                .iter()
                .map(|(port, table)| {
                    let mut owners: Vec<u16> = table.iter().map(|&(_, _, owner)| owner).collect();
                    owners.sort_unstable();
                    owners.dedup();
                    format!("{port} says slots belong to {owners:?}")
                })
                .collect();
            problems.push(format!("nodes disagree: {}", owners.join("; ")));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    fn logs(&self) -> String {
        logs(&self.nodes)
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
struct NodeLine {
    port: u16,
    flags: Vec<String>,
    link: String,
    slots: Vec<(u16, u16)>,
}

impl NodeLine {
    fn parse(line: &str) -> Option<Self> {
        // <id> <ip:port@cport[,hostname]> <flags> <master> <ping-sent> <pong-recv> <config-epoch>
        // <link-state> <slot> <slot> ...
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return None;
        }
        let address = fields[1].split(['@', ',']).next()?;
        let port = address.rsplit_once(':')?.1.parse().ok()?;
        let slots = fields[8..]
            .iter()
            .filter(|range| !range.starts_with('[')) // importing or migrating
            .filter_map(|range| match range.split_once('-') {
                Some((start, end)) => Some((start.parse().ok()?, end.parse().ok()?)),
                None => range.parse().ok().map(|slot| (slot, slot)),
            })
            .collect();
        Some(Self {
            port,
            flags: fields[2].split(',').map(str::to_owned).collect(),
            link: fields[7].to_owned(),
            slots,
        })
    }

    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn is_primary(&self) -> bool {
        self.has("master") && !self.has("fail") && !self.has("handshake") && !self.has("noaddr")
    }

    fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|&(start, end)| (start..=end).contains(&slot))
    }
}

fn cluster_nodes(conn: &mut redis::Connection) -> redis::RedisResult<Vec<NodeLine>> {
    let text: String = redis::cmd("CLUSTER").arg("NODES").query(conn)?;
    Ok(text.lines().filter_map(NodeLine::parse).collect())
}

/// Slot ranges and the port of the primary serving each, sorted.
fn slot_table(nodes: &[NodeLine]) -> Vec<(u16, u16, u16)> {
    let mut table: Vec<(u16, u16, u16)> = nodes
        .iter()
        .filter(|n| n.is_primary())
        .flat_map(|n| n.slots.iter().map(|&(start, end)| (start, end, n.port)))
        .collect();
    table.sort_unstable();
    table
}

/// A Sentinel setup on loopback: one primary, one replica and three sentinels (quorum 2,
/// down-after 500 ms, failover timeout 2 s), each a `redis-server` process of this test with its
/// own config file, waited on until every sentinel knows the primary, the synced replica and the
/// other two sentinels. Killed and cleaned on drop.
pub struct Sentinels {
    master_name: String,
    primary: Server,
    replica: Server,
    sentinels: Vec<Server>,
    _dir: TempDir,
}

impl Sentinels {
    /// Starts the primary and the replica, waits for the replica to sync, then starts the
    /// sentinels monitoring the primary as `master_name` and waits until they know everyone.
    pub fn start(master_name: &str) -> Self {
        assert!(
            !master_name.is_empty() && !master_name.contains(char::is_whitespace),
            "a sentinel master name is one word, got {master_name:?}"
        );
        let dir = TempDir::new("sentinel");
        let primary = data_node(&dir.path, "primary", None);
        let replica = data_node(&dir.path, "replica", Some(primary.port));
        // Started before the replica syncs, a sentinel would learn of it from the primary's
        // next INFO only.
        if let Err(seen) = poll(START_TIMEOUT, || synced(primary.port, replica.port)) {
            panic!(
                "the replica did not sync in {START_TIMEOUT:?}: {seen}\n{}",
                logs([&primary, &replica])
            );
        }
        let sentinels = (0..3)
            .map(|i| sentinel(&dir.path, i, master_name, primary.port))
            .collect();
        let setup = Self {
            master_name: master_name.to_owned(),
            primary,
            replica,
            sentinels,
            _dir: dir,
        };
        if let Err(seen) = poll(START_TIMEOUT, || setup.ready()) {
            panic!(
                "the sentinels did not learn the setup in {START_TIMEOUT:?}. Last seen:\n{seen}\n{}",
                setup.logs()
            );
        }
        setup
    }

    /// The name the sentinels monitor the primary under.
    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// `redis://127.0.0.1:port` of each sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(|s| url(s.port)).collect()
    }

    /// The port of the node started as the primary (it may have been demoted since).
    pub fn initial_primary(&self) -> u16 {
        self.primary.port
    }

    /// The port of the node started as the replica (it may have been promoted since).
    pub fn initial_replica(&self) -> u16 {
        self.replica.port
    }

    /// The port of the current primary, as the first sentinel that answers says
    /// (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    pub fn master_port(&self) -> u16 {
        let mut errors = Vec::new();
        for sentinel in &self.sentinels {
            match self.master_by(sentinel.port) {
                Ok(port) => return port,
                Err(e) => errors.push(format!("{}: {e}", sentinel.port)),
            }
        }
        panic!("no sentinel named the primary: {errors:?}");
    }

    /// Kills (SIGKILL) the `redis-server` on `port` (the primary or the replica).
    pub fn kill(&mut self, port: u16) {
        if port == self.primary.port {
            self.primary.kill();
        } else if port == self.replica.port {
            self.replica.kill();
        } else {
            panic!(
                "no data node on port {port}; the nodes are {} and {}",
                self.primary.port, self.replica.port
            );
        }
    }

    /// Asks the sentinels for a failover now (`SENTINEL FAILOVER <name>`), without killing
    /// anything. Retries for a few seconds while a sentinel finds no replica good enough.
    pub fn failover(&self) {
        let asked = poll(Duration::from_secs(5), || {
            let mut errors = Vec::new();
            for sentinel in &self.sentinels {
                let answer = connect(sentinel.port, PROBE_TIMEOUT).and_then(|mut conn| {
                    redis::cmd("SENTINEL")
                        .arg("FAILOVER")
                        .arg(&self.master_name)
                        .query::<()>(&mut conn)
                });
                match answer {
                    Ok(()) => return Ok(()),
                    Err(e) if e.to_string().contains("INPROG") => return Ok(()),
                    Err(e) => errors.push(format!("{}: {e}", sentinel.port)),
                }
            }
            Err(errors.join("; "))
        });
        if let Err(seen) = asked {
            panic!("no sentinel started a failover: {seen}\n{}", self.logs());
        }
    }

    /// Waits until every running sentinel names the same primary other than `old` and that
    /// node answers `ROLE` as a master; returns its port. Panics after `timeout` with what the
    /// sentinels said and the logs.
    pub fn wait_new_master(&self, old: u16, timeout: Duration) -> u16 {
        let found = poll(timeout, || {
            let answers: Vec<(u16, Result<u16, String>)> = self
                .sentinels
                .iter()
                .filter(|s| s.is_running())
                .map(|s| (s.port, self.master_by(s.port)))
                .collect();
            let named: Vec<u16> = answers
                .iter()
                .filter_map(|(_, answer)| answer.as_ref().ok().copied())
                .collect();
            let seen = format!("sentinels (port, primary): {answers:?}");
            let Some(&new) = named.first() else {
                return Err(seen);
            };
            if new == old || named.len() != answers.len() || named.iter().any(|&p| p != new) {
                return Err(seen);
            }
            match connect(new, PROBE_TIMEOUT)
                .map_err(|e| e.to_string())
                .and_then(|mut conn| role(&mut conn))
            {
                Ok(Role::Master) => Ok(new),
                other => Err(format!("{seen}; {new} answers ROLE {other:?}")),
            }
        });
        found.unwrap_or_else(|seen| {
            panic!(
                "the sentinels named no new primary in {timeout:?}. Last seen: {seen}\n{}",
                self.logs()
            )
        })
    }

    /// A plain connection to the node (data node or sentinel) on `port`.
    pub fn conn(&self, port: u16) -> redis::Connection {
        connect(port, CONN_TIMEOUT).unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
    }

    fn master_by(&self, sentinel: u16) -> Result<u16, String> {
        let address: Option<(String, String)> = connect(sentinel, PROBE_TIMEOUT)
            .and_then(|mut conn| {
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(&self.master_name)
                    .query(&mut conn)
            })
            .map_err(|e| e.to_string())?;
        let (_, port) = address.ok_or("unknown master name")?;
        port.parse().map_err(|_| format!("bad port {port:?}"))
    }

    /// `Ok` when every sentinel knows the primary, the synced replica and two other sentinels.
    fn ready(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        for sentinel in &self.sentinels {
            let observed = connect(sentinel.port, PROBE_TIMEOUT).and_then(|mut conn| {
                let master: HashMap<String, String> = redis::cmd("SENTINEL")
                    .arg("MASTER")
                    .arg(&self.master_name)
                    .query(&mut conn)?;
                let replicas: Vec<HashMap<String, String>> = redis::cmd("SENTINEL")
                    .arg("REPLICAS")
                    .arg(&self.master_name)
                    .query(&mut conn)?;
                Ok((master, replicas))
            });
            let (master, replicas) = match observed {
                Ok(observed) => observed,
                Err(e) => {
                    problems.push(format!("sentinel {}: {e}", sentinel.port));
                    continue;
                }
            };
            let get = |name: &str| master.get(name).map_or("?", String::as_str);
            let primary = self.primary.port.to_string();
            let replica = self.replica.port.to_string();
            let replica_ok = replicas.iter().any(|r| {
                r.get("port") == Some(&replica)
                    && r.get("flags").map(String::as_str) == Some("slave")
                    && r.get("master-link-status").map(String::as_str) == Some("ok")
            });
            if get("port") != primary
                || get("flags") != "master"
                || get("num-other-sentinels") != "2"
                || !replica_ok
            {
                problems.push(format!(
                    "sentinel {}: master port {} flags {}, {} other sentinels, replicas {:?}",
                    sentinel.port,
                    get("port"),
                    get("flags"),
                    get("num-other-sentinels"),
                    replicas
                        .iter()
                        .map(|r| (r.get("port"), r.get("flags"), r.get("master-link-status")))
                        .collect::<Vec<_>>()
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    fn logs(&self) -> String {
        logs(
            [&self.primary, &self.replica]
                .into_iter()
                .chain(&self.sentinels),
        )
    }
}

/// A primary or replica for [`Sentinels`]. It runs from a config file, since sentinels send
/// `CONFIG REWRITE` to the nodes they reconfigure.
fn data_node(dir: &Path, name: &str, replica_of: Option<u16>) -> Server {
    let node_dir = dir.join(name);
    fs::create_dir_all(&node_dir).expect("create a node directory");
    let config = dir.join(format!("{name}.conf"));
    Server::start(
        name.to_owned(),
        dir.join(format!("{name}.log")),
        1,
        |ports| {
            let mut text = format!(
                "port {}\nbind 127.0.0.1\ndir \"{}\"\nsave \"\"\nappendonly no\n\
                 repl-diskless-sync-delay 0\n",
                ports[0],
                path_text(&node_dir)
            );
            if let Some(primary) = replica_of {
                text.push_str(&format!("replicaof 127.0.0.1 {primary}\n"));
            }
            fs::write(&config, text).expect("write a node config");
            vec![path_text(&config)]
        },
    )
}

/// Sentinel `i`, monitoring the primary on `primary` as `name`.
fn sentinel(dir: &Path, i: usize, name: &str, primary: u16) -> Server {
    // Sentinel rewrites this file as it learns; it must stay writable.
    let config = dir.join(format!("sentinel-{i}.conf"));
    let server = Server::start(
        format!("sentinel {i}"),
        dir.join(format!("sentinel-{i}.log")),
        1,
        |ports| {
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir \"{dir}\"\n\
                 sentinel resolve-hostnames no\n\
                 sentinel monitor {name} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {name} {DOWN_AFTER_MS}\n\
                 sentinel failover-timeout {name} {FAILOVER_TIMEOUT_MS}\n\
                 sentinel parallel-syncs {name} 1\n",
                port = ports[0],
                dir = path_text(dir),
            );
            fs::write(&config, text).expect("write a sentinel config");
            vec![path_text(&config), "--sentinel".to_owned()]
        },
    );
    // INFO every 500 ms instead of 10 s, hello messages every 250 ms instead of 2 s: sentinels
    // find each other, and turn a demoted primary into a replica, in about a second.
    let tuned = connect(server.port, PROBE_TIMEOUT).and_then(|mut conn| {
        redis::cmd("SENTINEL")
            .arg("DEBUG")
            .arg("info-period")
            .arg(500)
            .arg("publish-period")
            .arg(250)
            .query::<()>(&mut conn)
    });
    if let Err(e) = tuned {
        panic!(
            "SENTINEL DEBUG failed on sentinel {i}: {e}\n{}",
            server.tail()
        );
    }
    server
}

/// `Ok` once the replica's link is up and the primary lists it online.
fn synced(primary: u16, replica: u16) -> Result<(), String> {
    let replica_side = connect(replica, PROBE_TIMEOUT)
        .and_then(|mut conn| info_section(&mut conn, "replication"))
        .map_err(|e| format!("replica: {e}"))?;
    let primary_side = connect(primary, PROBE_TIMEOUT)
        .and_then(|mut conn| info_section(&mut conn, "replication"))
        .map_err(|e| format!("primary: {e}"))?;
    let link = replica_side.get("master_link_status");
    let listed = primary_side.get("slave0");
    let online = format!("port={replica},state=online");
    if link.map(String::as_str) == Some("up") && listed.is_some_and(|l| l.contains(&online)) {
        Ok(())
    } else {
        Err(format!("replica link {link:?}, primary lists {listed:?}"))
    }
}

/// One `redis-server` process (a data node or a sentinel) and its log file. Killed on drop.
struct Server {
    name: String,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// Starts `redis-server` with the arguments `args` makes for `ports` fresh ports (the first
    /// is the client port), its output appended to `log`, and waits until it answers on that
    /// port as itself. A start that lost a port race is retried on fresh ports.
    fn start(
        name: String,
        log: PathBuf,
        ports: usize,
        mut args: impl FnMut(&[u16]) -> Vec<String>,
    ) -> Self {
        const ATTEMPTS: usize = 5;
        let mut failures = Vec::new();
        for _ in 0..ATTEMPTS {
            let chosen: Vec<u16> = (0..ports).map(|_| free_port()).collect();
            let output = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
            let child = Command::new("redis-server")
                .args(args(&chosen))
                .stdin(Stdio::null())
                .stdout(output.try_clone().expect("clone the log handle"))
                .stderr(output)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start redis-server ({e}). {INSTALL}"));
            let mut server = Self {
                name: name.clone(),
                port: chosen[0],
                log: log.clone(),
                child: Some(child),
            };
            match server.wait_started() {
                Ok(()) => return server,
                Err(why) => failures.push(format!("ports {chosen:?}: {why}")),
            }
        }
        panic!(
            "{name} did not start in {ATTEMPTS} attempts: {failures:#?}\n{}",
            tail(&name, &log)
        );
    }

    fn wait_started(&mut self) -> Result<(), String> {
        let child = self.child.as_mut().expect("just spawned");
        let pid = child.id().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited ({status})"));
            }
            if let Ok(info) = connect(self.port, PROBE_TIMEOUT)
                .and_then(|mut conn| info_section(&mut conn, "server"))
            {
                return if info.get("process_id") == Some(&pid) {
                    Ok(())
                } else {
                    self.kill();
                    Err(format!(
                        "another process (pid {:?}) answers on the port",
                        info.get("process_id")
                    ))
                };
            }
            if Instant::now() > deadline {
                self.kill();
                return Err("no answer in 10 s".to_owned());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, then reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn tail(&self) -> String {
        tail(&format!("{} (port {})", self.name, self.port), &self.log)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A directory of this test's own under the system temp dir. Removed on drop unless the test
/// is panicking: then it stays, with the logs, and its path is printed.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(kind: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "tollgate-{kind}-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping {} for its logs", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

/// A connection to 127.0.0.1:`port` that gives up connecting, reading or writing after
/// `timeout`.
fn connect(port: u16, timeout: Duration) -> redis::RedisResult<redis::Connection> {
    let conn = redis::Client::open(url(port))?.get_connection_with_timeout(timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    Ok(conn)
}

fn info_section(
    conn: &mut redis::Connection,
    section: &str,
) -> redis::RedisResult<HashMap<String, String>> {
    let text: String = redis::cmd("INFO").arg(section).query(conn)?;
    Ok(fields(&text))
}

/// `name:value` lines (INFO, CLUSTER INFO) as a map.
fn fields(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().split_once(':'))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// Calls `check` every [`POLL`] until it returns `Ok`; after `timeout`, the last observation.
fn poll<T>(timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = match check() {
            Ok(done) => return Ok(done),
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            return Err(seen);
        }
        std::thread::sleep(POLL);
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|&s| s.to_owned()).collect()
}

fn path_text(path: &Path) -> String {
    path.to_str()
        .unwrap_or_else(|| panic!("the temp path {} is not UTF-8", path.display()))
        .to_owned()
}

fn tail(name: &str, log: &Path) -> String {
    let text = fs::read(log)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", log.display()));
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_LINES);
    format!(
        "--- {name}: last lines of {} ---\n{}",
        log.display(),
        lines[start..].join("\n")
    )
}

fn logs<'a>(servers: impl IntoIterator<Item = &'a Server>) -> String {
    servers
        .into_iter()
        .map(Server::tail)
        .collect::<Vec<_>>()
        .join("\n")
}
