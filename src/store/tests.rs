//! Store behaviour on a real SQLite file (WAL, several connections).

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::api::{SiteKind, Stage};

async fn store() -> (tempfile::TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("db/test.db").display());
    let store = SqliteStore::connect(&url).await.unwrap();
    (dir, Arc::new(store))
}

fn new_job(owner: &str, created_at: Millis) -> NewJob {
    NewJob {
        id: Uuid::new_v4(),
        owner: owner.to_string(),
        kind: JobKind::Generate,
        model: "m".into(),
        request: json!({"prompt": "p"}),
        progress: JobProgress::queued(4),
        created_at,
        webhook: None,
    }
}

async fn create(store: &SqliteStore, owner: &str) -> JobRecord {
    match store.create_job(new_job(owner, now_millis()), None).await.unwrap() {
        CreateOutcome::Created(job) => job,
        CreateOutcome::Existing { .. } => panic!("unexpected replay"),
    }
}

#[tokio::test]
async fn jobs_are_claimed_in_order_exactly_once() {
    let (_dir, store) = store().await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(create(&store, "o").await.id);
    }
    assert_eq!(store.queue_position(store.get_job(ids[3]).await.unwrap().unwrap().queue_order).await.unwrap(), 3);
    let first = store.claim_next("w0", now_millis(), 10_000).await.unwrap().unwrap();
    assert_eq!(first.id, ids[0]);
    assert_eq!(first.status, JobStatus::Running);
    assert_eq!(first.attempts, 1);
    assert_eq!(first.lease_owner.as_deref(), Some("w0"));

    // Eight claimers race for the remaining five jobs.
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut claimed = Vec::new();
            while let Some(job) = store.claim_next(&format!("w{worker}"), now_millis(), 10_000).await.unwrap() {
                claimed.push(job.id);
            }
            claimed
        }));
    }
    let mut claimed = Vec::new();
    for task in tasks {
        claimed.extend(task.await.unwrap());
    }
    assert_eq!(claimed.len(), 5);
    assert_eq!(claimed.iter().collect::<HashSet<_>>(), ids[1..].iter().collect::<HashSet<_>>());
    assert!(store.claim_next("w9", now_millis(), 10_000).await.unwrap().is_none());
}

#[tokio::test]
async fn expired_leases_are_requeued_then_failed() {
    let (_dir, store) = store().await;
    let job = create(&store, "o").await;
    let now = now_millis();
    store.claim_next("w1", now, 1_000).await.unwrap().unwrap();
    assert!(store.recover_expired(now + 500, 2).await.unwrap().is_empty(), "lease still valid");
    let recovered = store.recover_expired(now + 1_001, 2).await.unwrap();
    assert_eq!(recovered, vec![RecoveredJob { id: job.id, new_status: JobStatus::Queued }]);
    // The dead worker's lease is gone: it can neither renew nor finish.
    assert_eq!(store.renew_lease(job.id, "w1", now, 1_000).await.unwrap(), LeaseState::Lost);
    assert!(store.finish_job(job.id, "w1", Finish::Canceled, now).await.unwrap().is_none());

    let again = store.claim_next("w2", now + 2_000, 1_000).await.unwrap().unwrap();
    assert_eq!(again.attempts, 2);
    let recovered = store.recover_expired(now + 5_000, 2).await.unwrap();
    assert_eq!(recovered[0].new_status, JobStatus::Failed);
    let failed = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!(failed.error.unwrap().code, "lease_expired");
    assert!(failed.finished_at.is_some());
}

#[tokio::test]
async fn progress_renewal_cancel_and_events() {
    let (_dir, store) = store().await;
    let job = create(&store, "o").await;
    let now = now_millis();
    store.claim_next("w", now, 10_000).await.unwrap();
    let progress = JobProgress { stage: Stage::Denoising, step: 1, total_steps: 4, run: 1, total_runs: 1 };
    assert_eq!(
        store.update_progress(job.id, "w", progress.clone(), now).await.unwrap(),
        LeaseState::Held { cancel_requested: false }
    );
    assert_eq!(store.update_progress(job.id, "other", progress.clone(), now).await.unwrap(), LeaseState::Lost);
    assert!(matches!(store.cancel_job(job.id, now).await.unwrap(), Some(CancelOutcome::Requested(_))));
    assert_eq!(store.renew_lease(job.id, "w", now, 10_000).await.unwrap(), LeaseState::Held { cancel_requested: true });
    let done = store.finish_job(job.id, "w", Finish::Canceled, now).await.unwrap().unwrap();
    assert_eq!(done.status, JobStatus::Canceled);
    assert!(matches!(store.cancel_job(job.id, now).await.unwrap(), Some(CancelOutcome::AlreadyFinished(_))));

    let events = store.events_after(job.id, 0).await.unwrap();
    let kinds: Vec<(i64, EventKind, JobStatus)> = events.iter().map(|e| (e.seq, e.kind, e.status)).collect();
    assert_eq!(
        kinds,
        vec![
            (1, EventKind::Status, JobStatus::Queued),
            (2, EventKind::Status, JobStatus::Running),
            (3, EventKind::Progress, JobStatus::Running),
            (4, EventKind::Status, JobStatus::Canceled),
        ]
    );
    assert_eq!(events[2].progress, progress);
    assert_eq!(store.events_after(job.id, 3).await.unwrap().len(), 1);
    assert_eq!(store.last_event_seq(job.id).await.unwrap(), 4);
}

#[tokio::test]
async fn queued_cancel_release_and_success() {
    let (_dir, store) = store().await;
    let now = now_millis();
    let queued = create(&store, "o").await;
    let Some(CancelOutcome::Canceled(canceled)) = store.cancel_job(queued.id, now).await.unwrap() else { panic!() };
    assert_eq!(canceled.status, JobStatus::Canceled);

    let job = create(&store, "o").await;
    store.claim_next("w", now, 10_000).await.unwrap().unwrap();
    assert!(store.release_job(job.id, "w", now).await.unwrap());
    let released = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!((released.status, released.attempts, released.lease_owner), (JobStatus::Queued, 0, None));

    store.claim_next("w", now, 10_000).await.unwrap().unwrap();
    let done = store
        .finish_job(job.id, "w", Finish::Succeeded { outputs: vec!["video".into()] }, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.outputs, vec!["video".to_string()]);
    assert_eq!(done.progress.stage, Stage::Done);
    let counts = store.count_by_status().await.unwrap();
    assert!(counts.contains(&(JobStatus::Succeeded, 1)) && counts.contains(&(JobStatus::Canceled, 1)));
}

#[tokio::test]
async fn idempotency_keys_replay_within_their_window() {
    let (_dir, store) = store().await;
    let now = now_millis();
    let claim = |not_before| IdempotencyClaim { scope: "o".into(), key: "k".into(), body_hash: "h1".into(), not_before };
    let CreateOutcome::Created(first) = store.create_job(new_job("o", now), Some(claim(0))).await.unwrap() else { panic!() };
    let CreateOutcome::Existing { job, body_hash } = store.create_job(new_job("o", now), Some(claim(0))).await.unwrap() else {
        panic!()
    };
    assert_eq!((job.id, body_hash.as_str()), (first.id, "h1"));
    assert_eq!(store.find_idempotent("o", "k", 0).await.unwrap().unwrap().0.id, first.id);
    assert!(store.find_idempotent("other", "k", 0).await.unwrap().is_none());
    // Expired: the key may name a new job.
    assert!(store.find_idempotent("o", "k", now + 1).await.unwrap().is_none());
    let CreateOutcome::Created(second) = store.create_job(new_job("o", now + 2), Some(claim(now + 1))).await.unwrap() else {
        panic!()
    };
    assert_ne!(second.id, first.id);
}

#[tokio::test]
async fn listing_filters_and_pages() {
    let (_dir, store) = store().await;
    let mut mine = Vec::new();
    for _ in 0..5 {
        mine.push(create(&store, "me").await.id);
        create(&store, "you").await;
    }
    let page = |before_order| JobFilter { owner: "me".into(), limit: 2, before_order, ..Default::default() };
    let first = store.list_jobs(page(None)).await.unwrap();
    assert_eq!(first.iter().map(|j| j.id).collect::<Vec<_>>(), vec![mine[4], mine[3]]);
    let second = store.list_jobs(page(Some(first[1].queue_order))).await.unwrap();
    assert_eq!(second.iter().map(|j| j.id).collect::<Vec<_>>(), vec![mine[2], mine[1]]);
    let running = JobFilter { owner: "me".into(), limit: 10, status: Some(JobStatus::Running), ..Default::default() };
    assert!(store.list_jobs(running).await.unwrap().is_empty());
}

#[tokio::test]
async fn statistics_and_uploads() {
    let (_dir, store) = store().await;
    let job = create(&store, "o").await;
    let record = |step, head| AttentionRecord {
        run: "main".into(),
        site: "s".into(),
        kind: SiteKind::Temporal,
        step,
        timestep: 981.0,
        head,
        entropy: 0.5,
        entropy_normalized: 0.25,
        energy: 3.0,
    };
    store.insert_attention(job.id, vec![record(0, None), record(0, Some(1))]).await.unwrap();
    // A retried attempt replaces the rows.
    store.insert_attention(job.id, vec![record(0, None), record(1, None)]).await.unwrap();
    assert_eq!(store.attention(job.id).await.unwrap(), vec![record(0, None), record(1, None)]);

    let upload = UploadRecord {
        upload: Upload { id: Uuid::new_v4().to_string(), num_frames: 8, width: 64, height: 48, fps: 8.0 },
        owner: "o".into(),
        size_bytes: 1234,
        created_at: now_millis(),
    };
    store.create_upload(upload.clone()).await.unwrap();
    let id = Uuid::parse_str(&upload.upload.id).unwrap();
    assert_eq!(store.get_upload(id).await.unwrap(), Some(upload));
    assert_eq!(store.get_upload(Uuid::new_v4()).await.unwrap(), None);
}

#[tokio::test]
async fn status_changes_enqueue_the_subscribed_webhooks() {
    let (_dir, store) = store().await;
    let now = now_millis();
    let subscribe = |events: &[&str]| {
        let mut job = new_job("o", now);
        job.webhook = Some(WebhookSubscription { url: "http://hook/".into(), events: events.iter().map(|e| e.to_string()).collect() });
        job
    };
    let CreateOutcome::Created(both) = store.create_job(subscribe(&["start", "completed"]), None).await.unwrap() else { panic!() };
    let CreateOutcome::Created(done_only) = store.create_job(subscribe(&["completed"]), None).await.unwrap() else { panic!() };
    create(&store, "o").await; // no webhook
    assert!(store.claim_webhook(now, 1_000).await.unwrap().is_none(), "queueing is no webhook event");

    for id in [both.id, done_only.id] {
        store.claim_next("w", now, 10_000).await.unwrap().unwrap();
        store.finish_job(id, "w", Finish::Succeeded { outputs: vec![] }, now).await.unwrap().unwrap();
    }
    let mut claimed = Vec::new();
    while let Some(delivery) = store.claim_webhook(now, 1_000).await.unwrap() {
        assert_eq!(delivery.attempts, 1);
        claimed.push((delivery.job_id, delivery.event.clone(), delivery.id));
    }
    let events: Vec<(Uuid, String)> = claimed.iter().map(|(job, event, _)| (*job, event.clone())).collect();
    assert_eq!(events, vec![(both.id, "start".into()), (both.id, "completed".into()), (done_only.id, "completed".into())]);

    // A claimed delivery comes back when its claim runs out, unless its outcome is recorded.
    let (first, second) = (claimed[0].2, claimed[1].2);
    store.finish_webhook(first, DeliveryOutcome::Delivered, now).await.unwrap();
    store.finish_webhook(second, DeliveryOutcome::Retry { at: now + 5_000, error: "503".into() }, now).await.unwrap();
    let again = store.claim_webhook(now + 1_001, 1_000).await.unwrap().unwrap();
    assert_eq!((again.job_id, again.event.as_str(), again.attempts), (done_only.id, "completed", 2));
    store.finish_webhook(again.id, DeliveryOutcome::Abandoned { error: "gone".into() }, now).await.unwrap();
    let retried = store.claim_webhook(now + 5_000, 1_000).await.unwrap().unwrap();
    assert_eq!((retried.id, retried.attempts), (second, 2));
    store.finish_webhook(retried.id, DeliveryOutcome::Delivered, now + 5_000).await.unwrap();
    assert!(store.claim_webhook(now + 100_000, 1_000).await.unwrap().is_none(), "delivered and abandoned ones stay done");
}
