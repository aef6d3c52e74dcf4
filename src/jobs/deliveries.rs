//! The webhook outbox's delivery loop. Deliveries are rows written with the status change they
//! report (see the store), so they survive crashes; every process runs this loop, and the store
//! hands each due delivery to one of them at a time.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::render::render_job_at;
use crate::config::WebhookSettings;
use crate::store::{now_millis, DeliveryOutcome, JobStore, WebhookDelivery};
use crate::webhooks::{self, RetryPolicy};

/// How often an idle loop looks for due deliveries.
const POLL: Duration = Duration::from_millis(100);

pub struct Deliverer {
    store: Arc<dyn JobStore>,
    client: reqwest::Client,
    secret: Vec<u8>,
    allow_private: bool,
    policy: RetryPolicy,
}

impl Deliverer {
    /// Starts the loop on the current runtime; abort the handle to stop it.
    pub fn start(store: Arc<dyn JobStore>, settings: &WebhookSettings, policy: RetryPolicy) -> JoinHandle<()> {
        let deliverer = Arc::new(Deliverer {
            store,
            client: webhooks::client(&policy),
            secret: settings.secret.clone().unwrap_or_default().into_bytes(),
            allow_private: settings.allow_private,
            policy,
        });
        tokio::spawn(deliverer.run())
    }

    /// An attempt in flight keeps its delivery for this long; after that (the process died
    /// mid-attempt) another loop may take it.
    fn claim_ms(&self) -> i64 {
        (self.policy.request_timeout * 2 + Duration::from_secs(5)).as_millis() as i64
    }

    async fn run(self: Arc<Self>) {
        loop {
            match self.store.claim_webhook(now_millis(), self.claim_ms()).await {
                Ok(Some(delivery)) => {
                    tokio::spawn(self.clone().attempt(delivery));
                }
                Ok(None) => tokio::time::sleep(POLL).await,
                Err(error) => {
                    tracing::warn!(%error, "could not read webhook deliveries");
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }

    async fn attempt(self: Arc<Self>, delivery: WebhookDelivery) {
        let result = match self.body(&delivery).await {
            Ok(body) => webhooks::post_signed(&self.client, &delivery.url, &self.secret, self.allow_private, body).await,
            Err(error) => Err(error),
        };
        let now = now_millis();
        let outcome = match result {
            Ok(()) => {
                tracing::info!(job = %delivery.job_id, event = %delivery.event, "webhook delivered");
                DeliveryOutcome::Delivered
            }
            Err(error) => {
                let delay = self.policy.delay(delivery.attempts.saturating_sub(1)).as_millis() as i64;
                let give_up_at = delivery.created_at + self.policy.give_up_after.as_millis() as i64;
                if now + delay > give_up_at {
                    tracing::warn!(job = %delivery.job_id, event = %delivery.event, %error, "webhook abandoned");
                    DeliveryOutcome::Abandoned { error }
                } else {
                    tracing::info!(job = %delivery.job_id, event = %delivery.event, %error, delay_ms = delay, "webhook attempt failed");
                    DeliveryOutcome::Retry { at: now + delay, error }
                }
            }
        };
        if let Err(error) = self.store.finish_webhook(delivery.id, outcome, now).await {
            // The claim runs out and the delivery is tried again: at least once, never lost.
            tracing::warn!(job = %delivery.job_id, %error, "could not record a webhook attempt");
        }
    }

    /// The job object as it was at the reported status change.
    async fn body(&self, delivery: &WebhookDelivery) -> Result<Vec<u8>, String> {
        let job = self.store.get_job(delivery.job_id).await.map_err(|e| e.to_string())?.ok_or("the job is gone")?;
        let events = self.store.events_after(delivery.job_id, delivery.event_seq - 1).await.map_err(|e| e.to_string())?;
        let event = events.into_iter().find(|e| e.seq == delivery.event_seq).ok_or("the reported event is gone")?;
        serde_json::to_vec(&render_job_at(&job, event.status, event.progress, None)).map_err(|e| e.to_string())
    }
}
