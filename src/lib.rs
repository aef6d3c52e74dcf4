//! entrovid: an HTTP inference server for text-to-video diffusion with measurable, steerable attention.
//!
//! Modules and who may use whom (arrows point at dependencies):
//!
//! ```text
//! http ──► jobs ──► store          api: wire types and error codes, no IO (used by all)
//!            │                     config: settings, parsed once in main
//!            ▼                     app: assembles a server or worker process
//!          worker ──► entrovid_model (pipeline), media (MP4), artifacts
//! ```
//!
//! A job's life: `POST /v1/jobs` validates the body into a `GenerateSpec` and commits a queued
//! row (plus an idempotency key) before answering 202. A worker thread claims it atomically with
//! a lease, runs the model while a lease thread renews the claim and watches for cancellation,
//! writes the MP4 and statistics to the artifact store and database, and marks it finished.
//! Every transition is an event row, which `/events` streams; a worker that dies leaves a lease
//! that expires, and the job goes back to the queue.

pub mod analysis;
pub mod api;
pub mod app;
pub mod artifacts;
pub mod cli;
pub mod commands;
pub mod config;
pub mod eval;
pub mod experiments;
pub mod http;
pub mod jobs;
pub mod media;
pub mod metrics;
pub mod store;
pub mod webhooks;
pub mod worker;
