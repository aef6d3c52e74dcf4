//! Prometheus metrics of one process. The recorder is owned by the app (not installed as the
//! global recorder), so several servers in one test process keep separate numbers.

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

use crate::api::JobStatus;

pub struct AppMetrics {
    recorder: PrometheusRecorder,
    queue_depth: Gauge,
    jobs_by_status: Vec<(JobStatus, Gauge)>,
    step_duration: Histogram,
    worker_busy_ms: Counter,
}

const METADATA: Metadata<'static> = Metadata::new("entrovid", Level::INFO, Some(module_path!()));
const DURATION_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0];

impl Default for AppMetrics {
    fn default() -> Self {
        AppMetrics::new()
    }
}

impl AppMetrics {
    pub fn new() -> AppMetrics {
        let builder = PrometheusBuilder::new();
        // Non-empty constant buckets cannot be refused.
        let builder = match builder.set_buckets(DURATION_BUCKETS) {
            Ok(builder) => builder,
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let queue_depth = recorder.register_gauge(&Key::from_static_name("entrovid_queue_depth"), &METADATA);
        let jobs_by_status = JobStatus::ALL
            .iter()
            .map(|&status| {
                let key = Key::from_parts("entrovid_jobs", vec![Label::new("status", status.as_str())]);
                (status, recorder.register_gauge(&key, &METADATA))
            })
            .collect();
        let step_duration =
            recorder.register_histogram(&Key::from_static_name("entrovid_step_duration_seconds"), &METADATA);
        let worker_busy_ms =
            recorder.register_counter(&Key::from_static_name("entrovid_worker_busy_milliseconds_total"), &METADATA);
        AppMetrics { recorder, queue_depth, jobs_by_status, step_duration, worker_busy_ms }
    }

    /// Sets the job-count gauges from a fresh count (queried at scrape time, so they also cover
    /// jobs of worker processes).
    pub fn set_job_counts(&self, counts: &[(JobStatus, u64)]) {
        for (status, gauge) in &self.jobs_by_status {
            let count = counts.iter().find(|(s, _)| s == status).map(|(_, n)| *n).unwrap_or(0);
            gauge.set(count as f64);
            if *status == JobStatus::Queued {
                self.queue_depth.set(count as f64);
            }
        }
    }

    pub fn record_job_duration(&self, status: JobStatus, seconds: f64) {
        let key = Key::from_parts("entrovid_job_duration_seconds", vec![Label::new("status", status.as_str())]);
        self.recorder.register_histogram(&key, &METADATA).record(seconds);
    }

    pub fn record_step_duration(&self, seconds: f64) {
        self.step_duration.record(seconds);
    }

    pub fn add_worker_busy(&self, duration: std::time::Duration) {
        self.worker_busy_ms.increment(duration.as_millis() as u64);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        self.recorder.handle().render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let metrics = AppMetrics::new();
        metrics.set_job_counts(&[(JobStatus::Queued, 3), (JobStatus::Succeeded, 2)]);
        metrics.record_job_duration(JobStatus::Succeeded, 1.5);
        metrics.record_step_duration(0.2);
        metrics.add_worker_busy(std::time::Duration::from_millis(1500));
        let text = metrics.render();
        assert!(text.contains("entrovid_queue_depth 3"), "{text}");
        assert!(text.contains("entrovid_jobs{status=\"succeeded\"} 2"), "{text}");
        assert!(text.contains("entrovid_job_duration_seconds_bucket"), "{text}");
        assert!(text.contains("entrovid_step_duration_seconds_count 1"), "{text}");
        assert!(text.contains("entrovid_worker_busy_milliseconds_total 1500"), "{text}");
    }
}
