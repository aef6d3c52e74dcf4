//! Wire types shared by the HTTP layer and the job service: requests, responses, error codes.
//! No IO here.

pub mod error;
pub mod job;
pub mod model;

pub use error::{ApiError, ErrorCode};
pub use job::{Job, JobError, JobKind, JobList, JobProgress, JobStatus, Stage};
pub use model::{
    AttentionRecord, AttentionRecords, ModelDefaults, ModelDescriptor, ModelLimits, ModelList,
    SiteDescriptor, SiteKind, Upload,
};
