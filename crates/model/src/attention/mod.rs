//! Attention sites, the controller through which they are observed and changed, the operators
//! that replace attention maps, their statistics, attention plans, and map injection for edits.

pub mod control;
pub(crate) mod cpu_softmax;
mod cpu_softmax_avx512;
pub mod inject;
pub mod ops;
pub mod plan;
pub mod site;
pub mod stats;

pub use control::{
    AttentionCall, AttentionControl, BatchRole, Branch, ForwardCtx, RunRole, StepInfo,
};
pub use inject::{InjectingControl, Injection};
pub use ops::{default_attention, MapOp};
pub use plan::{
    AttentionPlan, BranchSelector, EntropyRankSupport, PlanController, PlanError, StepWindow,
    ValidatedPlan,
};
pub use site::{SiteInfo, SiteKind};
pub use stats::{CallObserver, ObservedCall, RecordMode, SiteStepStats, StatsRecorder};
