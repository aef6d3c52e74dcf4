//! Webhooks: signed POSTs of the job object on `start` and `completed`, retried with exponential
//! backoff for up to an hour, on their own tasks so they never delay or fail a job.
//!
//! Targets are checked against loopback/private/link-local/unspecified addresses at submit and
//! again before every delivery attempt (a name may resolve elsewhere by then).

use std::net::IpAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::api::Job;
use crate::config::WebhookSettings;

pub const SIGNATURE_HEADER: &str = "Entrovid-Signature";

/// Delivery timing; the defaults are the production ones, tests shorten them.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// No attempt starts later than this after the first one.
    pub give_up_after: Duration,
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10 * 60),
            give_up_after: Duration::from_secs(60 * 60),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Delay before retry number `retry` (0-based): first_delay · 2^retry, capped.
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.min(30));
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// `sha256=<hex HMAC-SHA256 of body>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Addresses a webhook must not reach unless private targets are allowed.
pub fn is_internal_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                // 100.64.0.0/10, carrier-grade NAT: private in practice.
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal_address(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
        }
    }
}

/// Resolves the URL's host and refuses it when any address is internal (unless allowed).
pub async fn check_target(url: &str, allow_private: bool) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
    let host = parsed.host_str().ok_or("the URL has no host")?.trim_matches(|c| c == '[' || c == ']').to_string();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .map(|address| address.ip())
            .collect(),
    };
    if addresses.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    if !allow_private {
        if let Some(ip) = addresses.iter().find(|ip| is_internal_address(**ip)) {
            return Err(format!("{host} resolves to {ip}, a loopback, private, link-local or unspecified address"));
        }
    }
    Ok(())
}

struct Delivery {
    url: String,
    job: Job,
}

/// Queues deliveries to a background task on the runtime it was started on.
#[derive(Clone)]
pub struct WebhookDispatcher {
    sender: mpsc::UnboundedSender<Delivery>,
}

impl WebhookDispatcher {
    pub fn start(runtime: &tokio::runtime::Handle, settings: &WebhookSettings, policy: RetryPolicy) -> WebhookDispatcher {
        let (sender, mut receiver) = mpsc::unbounded_channel::<Delivery>();
        let secret = settings.secret.clone().unwrap_or_default().into_bytes();
        let allow_private = settings.allow_private;
        let client = reqwest::Client::builder()
            .timeout(policy.request_timeout)
            // A redirect could lead to an internal address the check never saw.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        runtime.spawn(async move {
            while let Some(delivery) = receiver.recv().await {
                tokio::spawn(deliver(client.clone(), secret.clone(), allow_private, policy.clone(), delivery));
            }
        });
        WebhookDispatcher { sender }
    }

    /// Sends `job` to `url` in the background.
    pub fn send(&self, url: &str, job: Job) {
        // The receiver lives as long as the runtime; after shutdown there is nobody to deliver.
        let _ = self.sender.send(Delivery { url: url.to_string(), job });
    }
}

async fn deliver(client: reqwest::Client, secret: Vec<u8>, allow_private: bool, policy: RetryPolicy, delivery: Delivery) {
    let body = match serde_json::to_vec(&delivery.job) {
        Ok(body) => body,
        Err(error) => {
            tracing::error!(job = %delivery.job.id, %error, "webhook body could not be serialised");
            return;
        }
    };
    let signature = signature(&secret, &body);
    let started = tokio::time::Instant::now();
    let mut retry = 0u32;
    loop {
        let outcome = match check_target(&delivery.url, allow_private).await {
            Err(reason) => Err(format!("target refused: {reason}")),
            Ok(()) => client
                .post(&delivery.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, &signature)
                .body(body.clone())
                .send()
                .await
                .map_err(|e| e.to_string())
                .and_then(|response| {
                    if response.status().is_success() {
                        Ok(())
                    } else {
                        Err(format!("status {}", response.status()))
                    }
                }),
        };
        match outcome {
            Ok(()) => {
                tracing::info!(job = %delivery.job.id, status = %delivery.job.status, "webhook delivered");
                return;
            }
            Err(reason) => {
                let delay = policy.delay(retry);
                if started.elapsed() + delay > policy.give_up_after {
                    tracing::warn!(job = %delivery.job.id, %reason, "webhook abandoned after retries");
                    return;
                }
                tracing::info!(job = %delivery.job.id, %reason, ?delay, "webhook attempt failed; retrying");
                tokio::time::sleep(delay).await;
                retry += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn internal_addresses() {
        for ip in ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "::1", "::", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "100.64.0.1"] {
            assert!(is_internal_address(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_internal_address(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn loopback_targets_are_refused_unless_allowed() {
        assert!(check_target("http://127.0.0.1:9/hook", false).await.is_err());
        assert!(check_target("http://[::1]:9/hook", false).await.is_err());
        assert!(check_target("http://localhost:9/hook", false).await.is_err());
        assert!(check_target("http://127.0.0.1:9/hook", true).await.is_ok());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.delay(0), Duration::from_secs(1));
        assert_eq!(policy.delay(3), Duration::from_secs(8));
        assert_eq!(policy.delay(20), Duration::from_secs(600));
    }
}
