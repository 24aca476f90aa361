//! `walcast serve` settings: command-line flags over environment variables over an optional
//! TOML file over defaults.

use crate::cluster::ClusterSettings;
use crate::hub::{HistoryLimits, Retention, RoomConfig, WindowConfig};
use crate::livequery::SnapshotConfig;
use crate::publish::IdempotencyConfig;
use crate::rules::{RuleError, RuleSpec, Rules};
use crate::tls::TlsFiles;
use crate::ws::deflate::{CompressionMode, CompressionPolicy};
use crate::ws::WsConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8099";
const DEFAULT_DATA_DIR: &str = "walcast-data";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("missing setting `{0}` (flag, environment variable or config file)")]
    Missing(&'static str),
    #[error("invalid listen address `{0}`")]
    Listen(String),
    #[error("`tls_cert` and `tls_key` go together: set both or neither")]
    TlsPair,
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterSettingsError),
    #[error("invalid channel rule")]
    Rule(#[from] RuleError),
}

/// Every serve setting, as flags (with their environment variables). The same keys, in
/// snake_case, may appear in the TOML file named by `--config`.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// PostgreSQL connection string (URL or key=value); the user needs the REPLICATION attribute.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Address to listen on [default: 127.0.0.1:8099]
    #[arg(long, env = "WALCAST_LISTEN")]
    pub listen: Option<String>,
    /// HS256 secret of the session JWTs (StaticBackend's JWT_SECRET).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Logical replication slot [default: walcast]
    #[arg(long, env = "WALCAST_SLOT")]
    pub slot: Option<String>,
    /// Publication [default: walcast]
    #[arg(long, env = "WALCAST_PUBLICATION")]
    pub publication: Option<String>,
    /// Maximum WebSocket connections in total [default: 10000]
    #[arg(long, env = "WALCAST_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Maximum WebSocket connections per app [default: 10000]
    #[arg(long, env = "WALCAST_MAX_CONNECTIONS_PER_APP")]
    pub max_connections_per_app: Option<usize>,
    /// Largest inbound message in bytes [default: 65536]
    #[arg(long, env = "WALCAST_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Outbound queue bound per connection in bytes [default: 4194304]
    #[arg(long, env = "WALCAST_MAX_OUTBOUND_BYTES")]
    pub max_outbound_bytes: Option<usize>,
    /// Inbound messages per second per connection, 0 = unlimited [default: 100]
    #[arg(long, env = "WALCAST_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Burst of inbound messages allowed above the rate [default: 200]
    #[arg(long, env = "WALCAST_RATE_BURST")]
    pub rate_burst: Option<u32>,
    /// Channels one connection may be in at once [default: 1024]
    #[arg(long, env = "WALCAST_MAX_CHANNELS_PER_CONNECTION")]
    pub max_channels_per_connection: Option<usize>,
    /// Seconds of history kept for `join` with `since`, 0 = no resume [default: 300]
    #[arg(long, env = "WALCAST_RESUME_WINDOW_SECS")]
    pub resume_window_secs: Option<u64>,
    /// Bytes of history kept for resume [default: 67108864]
    #[arg(long, env = "WALCAST_RESUME_WINDOW_BYTES")]
    pub resume_window_bytes: Option<usize>,
    /// Largest `data` of a `chan_in` or a server publish, in bytes [default: 65536]
    #[arg(long, env = "WALCAST_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Server key for `POST /publish` (sent as `Authorization: Bearer <key>`); without it only
    /// root users' session tokens may publish.
    #[arg(long, env = "WALCAST_PUBLISH_KEY", hide_env_values = true)]
    pub publish_key: Option<String>,
    /// Seconds an idempotency key is remembered, 0 = keys ignored [default: 120]
    #[arg(
        long,
        alias = "idempotency-window",
        env = "WALCAST_IDEMPOTENCY_WINDOW_SECS"
    )]
    pub idempotency_window_secs: Option<u64>,
    /// Idempotency keys remembered at most (the oldest is forgotten first) [default: 100000]
    #[arg(long, env = "WALCAST_IDEMPOTENCY_MAX_KEYS")]
    pub idempotency_max_keys: Option<usize>,
    /// Most rows one `join` snapshot may have; over it the join is refused [default: 10000]
    #[arg(long, env = "WALCAST_SNAPSHOT_MAX_ROWS")]
    pub snapshot_max_rows: Option<usize>,
    /// Seconds a snapshot statement (and the wait for the stream after it) may take [default: 10]
    #[arg(long, env = "WALCAST_SNAPSHOT_TIMEOUT_SECS")]
    pub snapshot_timeout_secs: Option<u64>,
    /// PostgreSQL connections kept for snapshots [default: 4]
    #[arg(long, env = "WALCAST_SNAPSHOT_POOL_SIZE")]
    pub snapshot_pool_size: Option<usize>,
    /// Snapshots read at once on this node; others wait up to 5 s [default: 4]
    #[arg(long, env = "WALCAST_SNAPSHOT_MAX_IN_FLIGHT")]
    pub snapshot_max_in_flight: Option<usize>,
    /// Events held for one member while its snapshot is read [default: 10000]
    #[arg(long, env = "WALCAST_SNAPSHOT_MAX_HELD_EVENTS")]
    pub snapshot_max_held_events: Option<usize>,
    /// Directory of walcast's own state: the resume window log, under
    /// `window/<system id>-<database>-<slot>/` [default: walcast-data]
    #[arg(long, env = "WALCAST_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Seconds between server pings [default: 30]
    #[arg(long, env = "WALCAST_PING_INTERVAL")]
    pub ping_interval_secs: Option<u64>,
    /// Seconds without traffic or pong before a connection is closed [default: 90]
    #[arg(long, env = "WALCAST_IDLE_TIMEOUT")]
    pub idle_timeout_secs: Option<u64>,
    /// Seconds a new connection has to complete its HTTP request headers [default: 10]
    #[arg(long, env = "WALCAST_HANDSHAKE_TIMEOUT")]
    pub handshake_timeout_secs: Option<u64>,
    /// TLS certificate chain (PEM); with --tls-key the listener speaks only TLS (wss://, https://).
    /// Re-read on SIGHUP.
    #[arg(long, env = "WALCAST_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1). Re-read on SIGHUP.
    #[arg(long, env = "WALCAST_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// permessage-deflate: off, on (every text message), or auto (messages of at least
    /// --compression-threshold bytes) [default: auto]
    #[arg(long, env = "WALCAST_COMPRESSION", value_enum)]
    pub compression: Option<CompressionMode>,
    /// Smallest message compressed in auto mode, in bytes [default: 256]
    #[arg(long, env = "WALCAST_COMPRESSION_THRESHOLD")]
    pub compression_threshold: Option<usize>,
    /// Cluster mode: the NATS server (JetStream enabled) the nodes share, e.g. nats://host:4222.
    /// Without it, walcast runs as a single node and uses no NATS.
    #[arg(long, env = "WALCAST_CLUSTER")]
    pub cluster: Option<String>,
    /// This node's name in the cluster [default: a random one]
    #[arg(long, env = "WALCAST_NODE_ID")]
    pub node_id: Option<String>,
    /// JetStream stream of committed transactions [default: WALCAST]
    #[arg(long, env = "WALCAST_CLUSTER_STREAM")]
    pub cluster_stream: Option<String>,
    /// Subject prefix of the cluster's NATS subjects [default: walcast]
    #[arg(long, env = "WALCAST_CLUSTER_SUBJECT")]
    pub cluster_subject: Option<String>,
    /// Seconds the slot lease lives without renewal [default: 3]
    #[arg(long, env = "WALCAST_CLUSTER_LEASE_SECS")]
    pub cluster_lease_secs: Option<u64>,
    /// Messages of history kept per custom channel, 0 = none [default: 100]
    #[arg(long, env = "WALCAST_HISTORY_SIZE")]
    pub history_size: Option<usize>,
    /// Seconds a custom channel's message stays in history, 0 = none [default: 300]
    #[arg(long, env = "WALCAST_HISTORY_TTL_SECS")]
    pub history_ttl_secs: Option<u64>,
    /// Bytes of custom-channel history kept across all channels [default: 67108864]
    #[arg(long, env = "WALCAST_HISTORY_MAX_BYTES")]
    pub history_max_bytes: Option<usize>,
    /// Members listed in a `presence` reply at most [default: 1000]
    #[arg(long, env = "WALCAST_PRESENCE_MAX_MEMBERS")]
    pub presence_max_members: Option<usize>,
    /// Largest presence `meta` a client may give at join, in bytes of JSON [default: 1024]
    #[arg(long, env = "WALCAST_PRESENCE_MAX_META_BYTES")]
    pub presence_max_meta_bytes: Option<usize>,
    /// Largest room metadata, in bytes of JSON [default: 4096]
    #[arg(long, env = "WALCAST_ROOM_META_MAX_BYTES")]
    pub room_meta_max_bytes: Option<usize>,
    /// Channel access rules: `[[channel]]` tables of the config file only (see OPERATIONS.md).
    #[arg(skip)]
    #[serde(default, rename = "channel")]
    pub channel_rules: Option<Vec<RuleSpec>>,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: String,
    pub listen: SocketAddr,
    pub jwt_secret: String,
    pub slot: String,
    pub publication: String,
    pub max_connections: usize,
    pub max_connections_per_app: usize,
    pub ws: WsConfig,
    pub resume_window: WindowConfig,
    pub publish: PublishSettings,
    /// Serve TLS with these PEM files; plain HTTP when `None`.
    pub tls: Option<TlsFiles>,
    pub snapshot: SnapshotConfig,
    /// Where the resume window log lives (see [`ServeArgs::data_dir`]).
    pub data_dir: PathBuf,
    /// Custom-channel rules, history and presence bounds.
    pub rooms: RoomConfig,
    /// Serve the demo endpoints (`walcast up`).
    pub demo: bool,
    /// Cluster mode (NATS JetStream); `None`: a single node.
    pub cluster: Option<ClusterSettings>,
}

/// The server publish API and custom-channel message limits.
#[derive(Clone, Default)]
pub struct PublishSettings {
    /// `POST /publish` server key; `None`: root users' session tokens only.
    pub key: Option<String>,
    pub idempotency: IdempotencyConfig,
    /// Largest `data` of a `chan_in` or server publish, in bytes.
    pub max_message_bytes: usize,
}

impl std::fmt::Debug for PublishSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishSettings")
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("idempotency", &self.idempotency)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish()
    }
}

/// `--max-message-bytes` default: as large as the default frame.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;

macro_rules! merge_fields {
    ($into:ident, $from:ident; $($field:ident),*) => {
        $( if $into.$field.is_none() { $into.$field = $from.$field; } )*
    };
}

impl ServeArgs {
    /// Fills every unset field from `file`.
    pub fn or(mut self, file: ServeArgs) -> ServeArgs {
        merge_fields!(self, file; database_url, listen, jwt_secret, slot, publication,
            max_connections, max_connections_per_app, max_frame_bytes, max_outbound_bytes,
            rate_limit, rate_burst, max_channels_per_connection, resume_window_secs, resume_window_bytes, max_message_bytes, publish_key,
            idempotency_window_secs, idempotency_max_keys, ping_interval_secs, idle_timeout_secs,
            handshake_timeout_secs, tls_cert, tls_key, compression, compression_threshold,
            snapshot_max_rows, snapshot_timeout_secs, snapshot_pool_size, snapshot_max_in_flight,
            snapshot_max_held_events, data_dir, cluster, node_id, cluster_stream, cluster_subject, cluster_lease_secs,
            history_size, history_ttl_secs, history_max_bytes, presence_max_members,
            presence_max_meta_bytes, room_meta_max_bytes, channel_rules);
        self
    }

    pub fn from_file(path: &std::path::Path) -> Result<ServeArgs, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    fn rooms(&self) -> Result<RoomConfig, ConfigError> {
        let defaults = RoomConfig::default();
        let history = defaults.history;
        Ok(RoomConfig {
            rules: match &self.channel_rules {
                Some(specs) => Rules::from_specs(specs)?,
                None => defaults.rules,
            },
            history: HistoryLimits {
                retention: Retention {
                    size: self.history_size.unwrap_or(history.retention.size),
                    ttl: self
                        .history_ttl_secs
                        .map(Duration::from_secs)
                        .unwrap_or(history.retention.ttl),
                },
                max_bytes: self.history_max_bytes.unwrap_or(history.max_bytes),
            },
            presence_max_members: self
                .presence_max_members
                .unwrap_or(defaults.presence_max_members),
            presence_max_meta_bytes: self
                .presence_max_meta_bytes
                .unwrap_or(defaults.presence_max_meta_bytes),
            room_meta_max_bytes: self
                .room_meta_max_bytes
                .unwrap_or(defaults.room_meta_max_bytes),
        })
    }

    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let defaults = WsConfig::default();
        let rooms = self.rooms()?;
        let cluster = match self.cluster {
            None => None,
            Some(url) => Some(ClusterSettings::new(
                url,
                self.node_id,
                self.cluster_stream,
                self.cluster_subject,
                self.cluster_lease_secs,
            )?),
        };
        let listen = self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => return Err(ConfigError::TlsPair),
        };
        Ok(Settings {
            database_url: self
                .database_url
                .ok_or(ConfigError::Missing("database_url"))?,
            listen: listen
                .parse()
                .map_err(|_| ConfigError::Listen(listen.clone()))?,
            jwt_secret: self.jwt_secret.ok_or(ConfigError::Missing("jwt_secret"))?,
            slot: self.slot.unwrap_or_else(|| "walcast".to_owned()),
            publication: self.publication.unwrap_or_else(|| "walcast".to_owned()),
            max_connections: self.max_connections.unwrap_or(10_000),
            max_connections_per_app: self.max_connections_per_app.unwrap_or(10_000),
            ws: WsConfig {
                max_frame_bytes: self.max_frame_bytes.unwrap_or(defaults.max_frame_bytes),
                max_outbound_bytes: self
                    .max_outbound_bytes
                    .unwrap_or(defaults.max_outbound_bytes),
                rate_per_sec: self.rate_limit.unwrap_or(defaults.rate_per_sec),
                rate_burst: self.rate_burst.unwrap_or(defaults.rate_burst),
                max_channels: self
                    .max_channels_per_connection
                    .unwrap_or(defaults.max_channels),
                ping_interval: self
                    .ping_interval_secs
                    .map(Duration::from_secs)
                    .unwrap_or(defaults.ping_interval),
                idle_timeout: self
                    .idle_timeout_secs
                    .map(Duration::from_secs)
                    .unwrap_or(defaults.idle_timeout),
                handshake_timeout: self
                    .handshake_timeout_secs
                    .map(Duration::from_secs)
                    .unwrap_or(defaults.handshake_timeout),
                compression: CompressionPolicy {
                    mode: self.compression.unwrap_or(defaults.compression.mode),
                    threshold: self
                        .compression_threshold
                        .unwrap_or(defaults.compression.threshold),
                },
            },
            resume_window: WindowConfig {
                max_age: self
                    .resume_window_secs
                    .map(Duration::from_secs)
                    .unwrap_or(WindowConfig::default().max_age),
                max_bytes: self
                    .resume_window_bytes
                    .unwrap_or(WindowConfig::default().max_bytes),
            },
            publish: PublishSettings {
                key: self.publish_key.filter(|k| !k.is_empty()),
                idempotency: IdempotencyConfig {
                    window: self
                        .idempotency_window_secs
                        .map(Duration::from_secs)
                        .unwrap_or(IdempotencyConfig::default().window),
                    max_keys: self
                        .idempotency_max_keys
                        .unwrap_or(IdempotencyConfig::default().max_keys),
                },
                max_message_bytes: self.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
            },
            tls,
            snapshot: {
                let d = SnapshotConfig::default();
                SnapshotConfig {
                    max_rows: self.snapshot_max_rows.unwrap_or(d.max_rows),
                    timeout: self
                        .snapshot_timeout_secs
                        .map(Duration::from_secs)
                        .unwrap_or(d.timeout),
                    pool_size: self.snapshot_pool_size.unwrap_or(d.pool_size),
                    max_in_flight: self.snapshot_max_in_flight.unwrap_or(d.max_in_flight),
                    max_held_events: self.snapshot_max_held_events.unwrap_or(d.max_held_events),
                    ..d
                }
            },
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            rooms,
            demo: false,
            cluster,
        })
    }
}

impl Settings {
    /// Settings for a given database with every default (tests, `walcast up`), the data
    /// directory in the system's temporary directory (logs are kept apart per server, database
    /// and slot there).
    pub fn new(database_url: impl Into<String>, jwt_secret: impl Into<String>) -> Settings {
        ServeArgs {
            database_url: Some(database_url.into()),
            jwt_secret: Some(jwt_secret.into()),
            data_dir: Some(std::env::temp_dir().join("walcast")),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_or_else(|_| unreachable!("database_url and jwt_secret are set"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_over_file_over_defaults() {
        let flags = ServeArgs {
            listen: Some("127.0.0.1:1".into()),
            ..ServeArgs::default()
        };
        let file: ServeArgs = toml::from_str(
            "listen = \"127.0.0.1:2\"\ndatabase_url = \"postgres://x\"\njwt_secret = \"s\"\nrate_limit = 5\n\
             publish_key = \"k\"\nidempotency_window_secs = 30\nmax_message_bytes = 10\n",
        )
        .unwrap();
        let settings = flags.or(file).resolve().unwrap();
        assert_eq!(settings.listen.port(), 1);
        assert_eq!(settings.database_url, "postgres://x");
        assert_eq!(settings.ws.rate_per_sec, 5);
        assert_eq!(settings.slot, "walcast");
        assert_eq!(settings.ws.handshake_timeout, Duration::from_secs(10));
        assert_eq!(settings.publish.key.as_deref(), Some("k"));
        assert_eq!(settings.publish.idempotency.window, Duration::from_secs(30));
        assert_eq!(settings.publish.max_message_bytes, 10);
        assert!(!format!("{settings:?}").contains("\"k\""), "key redacted");
        assert!(settings.tls.is_none(), "plain HTTP by default");
        assert_eq!(settings.ws.compression, CompressionPolicy::default());
        let file: ServeArgs = toml::from_str("handshake_timeout_secs = 3").unwrap();
        let tuned = ServeArgs {
            database_url: Some("postgres://x".into()),
            jwt_secret: Some("s".into()),
            ..ServeArgs::default()
        }
        .or(file)
        .resolve()
        .unwrap();
        assert_eq!(tuned.ws.handshake_timeout, Duration::from_secs(3));
    }

    #[test]
    fn tls_and_compression_from_the_file() {
        let file: ServeArgs = toml::from_str(
            "database_url = \"postgres://x\"\njwt_secret = \"s\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ncompression = \"on\"\ncompression_threshold = 10\n",
        )
        .unwrap();
        let settings = ServeArgs::default().or(file).resolve().unwrap();
        let tls = settings.tls.unwrap();
        assert_eq!(
            (tls.cert.to_str(), tls.key.to_str()),
            (Some("c.pem"), Some("k.pem"))
        );
        assert_eq!(settings.ws.compression.mode, CompressionMode::On);
        assert_eq!(settings.ws.compression.threshold, 10);
        let half: ServeArgs = toml::from_str(
            "database_url = \"postgres://x\"\njwt_secret = \"s\"\ntls_cert = \"c.pem\"\n",
        )
        .unwrap();
        assert!(matches!(half.resolve(), Err(ConfigError::TlsPair)));
        assert!(toml::from_str::<ServeArgs>("compression = \"sometimes\"").is_err());
    }

    #[test]
    fn channel_rules_and_room_limits_from_the_file() {
        let file: ServeArgs = toml::from_str(
            r#"
            database_url = "postgres://x"
            jwt_secret = "s"
            history_size = 7
            presence_max_meta_bytes = 10

            [[channel]]
            pattern = "ops-*"
            publish = "root"
            presence = true
            "#,
        )
        .unwrap();
        let settings = ServeArgs::default().or(file).resolve().unwrap();
        assert_eq!(settings.rooms.history.retention.size, 7);
        assert_eq!(settings.rooms.presence_max_meta_bytes, 10);
        assert!(settings.rooms.rules.policy("ops-x").presence);
        assert!(!settings.rooms.rules.policy("presence-x").presence);
        assert!(
            Settings::new("postgres://x", "s")
                .rooms
                .rules
                .policy("presence-x")
                .presence
        );
        assert!(toml::from_str::<ServeArgs>("[[channel]]\npattern = \"x\"\nfoo = 1\n").is_err());
        let bad: ServeArgs = toml::from_str(
            "database_url = \"x\"\njwt_secret = \"s\"\n[[channel]]\npattern = \"a-{who}\"\n",
        )
        .unwrap();
        assert!(matches!(bad.resolve(), Err(ConfigError::Rule(_))));
    }

    #[test]
    fn unknown_file_keys_and_missing_values_are_errors() {
        assert!(toml::from_str::<ServeArgs>("nope = 1").is_err());
        assert!(matches!(
            ServeArgs::default().resolve(),
            Err(ConfigError::Missing("database_url"))
        ));
    }
}
