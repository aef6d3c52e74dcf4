//! Settings, parsed once in `main` (defaults → TOML file → `ENTROVID_*` environment → CLI flags)
//! and handed to their owners as sub-structs. Nothing reads the environment after this.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Root of everything the server writes: the SQLite database and the artifact store.
    pub data_dir: PathBuf,
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub store: StoreSettings,
    pub queue: QueueSettings,
    pub webhooks: WebhookSettings,
    pub models: ModelSettings,
    pub workers: WorkerSettings,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    pub bind: SocketAddr,
    /// Largest JSON body accepted (bytes).
    pub body_limit_bytes: usize,
    /// Largest upload accepted (bytes).
    pub upload_limit_bytes: usize,
    /// Allowed CORS origins; empty = no CORS headers; "*" = any origin.
    pub cors_origins: Vec<String>,
    /// How long a shutdown waits for running jobs before re-queueing them (seconds).
    pub shutdown_grace_seconds: u64,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Accepted bearer tokens; empty = authentication disabled (every caller is one anonymous owner).
    pub api_keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// `sqlite://path` (created when missing); default: `<data_dir>/entrovid.db`.
    pub database_url: Option<String>,
    /// A worker's claim on a job lasts this long unless renewed.
    pub lease_seconds: u64,
    /// After this many attempts whose lease expired, a job fails instead of being re-queued.
    pub max_attempts: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    /// Queued jobs beyond this are refused with 429.
    pub bound: u64,
    pub retry_after_seconds: u64,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// HMAC-SHA256 key of `Entrovid-Signature`. Webhooks are never sent unsigned: without a
    /// secret, requests naming a `webhook_url` are refused with 422.
    pub secret: Option<String>,
    /// Allow loopback/private/link-local targets (tests, trusted networks).
    pub allow_private: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    /// Folder of model folders (diffusers pipeline layout), one per model id.
    pub dir: PathBuf,
    /// Model id used when a request names none; default: the folder marked default, else
    /// `entrovid-world-tiny`, else the only/first model.
    pub default: Option<String>,
    /// Serve the built-in synthetic model (moving-square frames, made-up statistics, this many
    /// milliseconds per step) instead of the model folders: for smoke tests of a deployment and
    /// for process-level tests that need no weights.
    pub synthetic_step_ms: Option<u64>,
    /// Compute precision: `f32` (default), `f16` or `bf16`.
    pub dtype: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Worker threads on the CPU when `devices` is empty (`serve`: 0 = API only).
    pub count: usize,
    /// One worker thread per entry, each owning that device: `cpu`, `cuda`, `cuda:N` (CUDA needs
    /// a build with the `cuda` feature). Empty: `count` threads on the CPU.
    pub devices: Vec<String>,
    /// How often an idle worker looks for work in the database (milliseconds).
    pub poll_interval_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data_dir: PathBuf::from("./data"),
            server: ServerSettings::default(),
            auth: AuthSettings::default(),
            store: StoreSettings::default(),
            queue: QueueSettings::default(),
            webhooks: WebhookSettings::default(),
            models: ModelSettings::default(),
            workers: WorkerSettings::default(),
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 1024 * 1024,
            upload_limit_bytes: 64 * 1024 * 1024,
            cors_origins: Vec::new(),
            shutdown_grace_seconds: 30,
        }
    }
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings { database_url: None, lease_seconds: 30, max_attempts: 3 }
    }
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings { bound: 1000, retry_after_seconds: 5 }
    }
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings { dir: PathBuf::from("./models"), default: None, synthetic_step_ms: None, dtype: "f32".to_string() }
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings { count: 1, devices: Vec::new(), poll_interval_ms: 250 }
    }
}

/// Values given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Clone, Default)]
pub struct CliOverrides {
    pub bind: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub models_dir: Option<PathBuf>,
    pub workers: Option<usize>,
    pub devices: Option<Vec<String>>,
}

impl Settings {
    /// Layers: defaults, then `config_file`, then the `ENTROVID_*` variables of `env`, then `cli`.
    pub fn load(
        config_file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        cli: &CliOverrides,
    ) -> Result<Settings, ConfigError> {
        let mut settings = match config_file {
            Some(path) => Settings::from_toml_file(path)?,
            None => Settings::default(),
        };
        settings.apply_env(env)?;
        settings.apply_cli(cli);
        Ok(settings)
    }

    pub fn from_toml_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        toml::from_str(&text)
            .map_err(|error| ConfigError::Parse { path: path.to_path_buf(), message: error.to_string() })
    }

    fn apply_env(&mut self, env: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
        for (name, value) in env {
            let Some(key) = name.strip_prefix("ENTROVID_") else { continue };
            let bad = |message: String| ConfigError::Env { name: name.clone(), message };
            match key {
                "BIND" => self.server.bind = value.parse().map_err(|e| bad(format!("{e}")))?,
                "DATA_DIR" => self.data_dir = PathBuf::from(&value),
                "MODELS_DIR" => self.models.dir = PathBuf::from(&value),
                "DEFAULT_MODEL" => self.models.default = Some(value.clone()),
                "SYNTHETIC_STEP_MS" => self.models.synthetic_step_ms = Some(parse_number(&value).map_err(bad)?),
                "DATABASE_URL" => self.store.database_url = Some(value.clone()),
                "LEASE_SECONDS" => self.store.lease_seconds = parse_number(&value).map_err(bad)?,
                "MAX_ATTEMPTS" => self.store.max_attempts = parse_number(&value).map_err(bad)?,
                "QUEUE_BOUND" => self.queue.bound = parse_number(&value).map_err(bad)?,
                "BODY_LIMIT" => self.server.body_limit_bytes = parse_number(&value).map_err(bad)?,
                "UPLOAD_LIMIT" => self.server.upload_limit_bytes = parse_number(&value).map_err(bad)?,
                "CORS_ORIGINS" => self.server.cors_origins = split_list(&value),
                "API_KEYS" => self.auth.api_keys = split_list(&value),
                "WEBHOOK_SECRET" => self.webhooks.secret = Some(value.clone()),
                "WEBHOOK_ALLOW_PRIVATE" => self.webhooks.allow_private = parse_bool(&value).map_err(bad)?,
                "WORKERS" => self.workers.count = parse_number(&value).map_err(bad)?,
                "DEVICES" => self.workers.devices = split_list(&value),
                "DTYPE" => self.models.dtype = value.trim().to_string(),
                // Variables for other tools (e.g. ENTROVID_LOG read by the log filter) are not ours.
                _ => {}
            }
        }
        Ok(())
    }

    fn apply_cli(&mut self, cli: &CliOverrides) {
        if let Some(bind) = cli.bind {
            self.server.bind = bind;
        }
        if let Some(dir) = &cli.data_dir {
            self.data_dir = dir.clone();
        }
        if let Some(dir) = &cli.models_dir {
            self.models.dir = dir.clone();
        }
        if let Some(count) = cli.workers {
            self.workers.count = count;
        }
        if let Some(devices) = &cli.devices {
            self.workers.devices = devices.clone();
        }
    }

    pub fn database_url(&self) -> String {
        match &self.store.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("entrovid.db").display()),
        }
    }

    /// The device of each worker thread.
    pub fn worker_devices(&self) -> Vec<String> {
        if self.workers.devices.is_empty() {
            vec!["cpu".to_string(); self.workers.count]
        } else {
            self.workers.devices.clone()
        }
    }

    pub fn artifacts_dir(&self) -> PathBuf {
        self.data_dir.join("artifacts")
    }
}

fn parse_number<T: std::str::FromStr>(value: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    value.trim().parse().map_err(|e| format!("{e}"))
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        other => Err(format!("expected true or false, got {other:?}")),
    }
}

fn split_list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|item| !item.is_empty()).map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn layers_apply_in_order_file_env_cli() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("entrovid.toml");
        std::fs::write(
            &file,
            "data_dir = \"/from/file\"\n[server]\nbind = \"0.0.0.0:9000\"\n[store]\nlease_seconds = 7\nmax_attempts = 9\n",
        )
        .unwrap();
        let cli = CliOverrides { data_dir: Some(PathBuf::from("/from/cli")), ..Default::default() };
        let settings = Settings::load(
            Some(&file),
            env(&[("ENTROVID_LEASE_SECONDS", "11"), ("ENTROVID_API_KEYS", "a, b"), ("HOME", "/x")]),
            &cli,
        )
        .unwrap();
        assert_eq!(settings.data_dir, PathBuf::from("/from/cli"));
        assert_eq!(settings.server.bind.port(), 9000);
        assert_eq!(settings.store.lease_seconds, 11);
        assert_eq!(settings.store.max_attempts, 9);
        assert_eq!(settings.auth.api_keys, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(settings.database_url(), "sqlite:///from/cli/entrovid.db");
        assert_eq!(settings.worker_devices(), vec!["cpu".to_string()]);
        let gpus = Settings::load(None, env(&[("ENTROVID_DEVICES", "cuda:0, cuda:1")]), &CliOverrides::default()).unwrap();
        assert_eq!(gpus.worker_devices(), vec!["cuda:0".to_string(), "cuda:1".to_string()]);
    }

    #[test]
    fn bad_values_name_their_source() {
        let error = Settings::load(None, env(&[("ENTROVID_QUEUE_BOUND", "many")]), &CliOverrides::default())
            .unwrap_err();
        assert!(error.to_string().contains("ENTROVID_QUEUE_BOUND"), "{error}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[server]\nnot_a_setting = 1\n").unwrap();
        let error = Settings::load(Some(&file), Vec::new(), &CliOverrides::default()).unwrap_err();
        assert!(error.to_string().contains("not_a_setting"), "{error}");
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let settings = Settings::default();
        assert_eq!(settings.server.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(settings.data_dir, PathBuf::from("./data"));
        assert_eq!(settings.models.dir, PathBuf::from("./models"));
        assert_eq!(settings.server.upload_limit_bytes, 64 * 1024 * 1024);
    }
}
