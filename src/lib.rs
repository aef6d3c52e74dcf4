//! entrovid: an HTTP inference server for text-to-video diffusion with measurable, steerable attention.

pub mod api;
pub mod artifacts;
pub mod config;
pub mod jobs;
pub mod media;
pub mod metrics;
pub mod store;
pub mod webhooks;
pub mod worker;
pub mod app;
pub mod cli;
pub mod commands;
pub mod http;
