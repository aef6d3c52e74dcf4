//! Attention sites, the controller through which they are observed and changed, the operators
//! that replace attention maps, their statistics, and attention plans.

pub mod control;
pub mod ops;
pub mod plan;
pub mod site;
pub mod stats;

pub use control::{
    AttentionCall, AttentionControl, BatchRole, Branch, ForwardCtx, RunRole, StepInfo,
};
pub use ops::{default_attention, MapOp};
pub use plan::{AttentionPlan, EntropyRankSupport, PlanController, PlanError, ValidatedPlan};
pub use site::{SiteInfo, SiteKind};
pub use stats::{RecordMode, SiteStepStats, StatsRecorder};
