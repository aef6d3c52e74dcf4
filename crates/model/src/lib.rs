//! entrovid's text-to-video diffusion models in candle.
//!
//! Every attention layer of the UNet is a named site (see [`attention`]) whose maps can be observed
//! and changed through an explicit per-step [`attention::ForwardCtx`]; the models themselves hold no
//! mutable state and are shared read-only between jobs.

pub mod attention;
pub mod bench;
pub mod clip;
pub mod conv;
mod cpu_math;
pub mod debug;
pub mod device;
pub mod error;
mod layout;
pub mod linear;
pub mod model_info;
pub mod noise;
pub mod norm;
pub mod pipeline;
pub mod scheduler;
#[cfg(test)]
mod test_support;
pub mod tokenizer;
pub mod unet3d;
pub mod vae;
mod vae_blocks;
mod winograd;
pub mod weights;
