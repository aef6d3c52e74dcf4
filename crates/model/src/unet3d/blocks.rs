//! The UNet3D's down, mid and up blocks (diffusers `unet_3d_blocks.py`). A cross-attention block
//! and a plain block differ only in whether each layer has transformers, so one type covers both.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::attention::ForwardCtx;

use super::attention::SiteRegistry;
use super::config::BlockKind;
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetSettings, TemporalConvLayer, Upsample2D};
use super::transformer::{Transformer2D, TransformerSpec, TransformerTemporal};
use super::video::VideoShape;

/// Inputs every block layer needs.
pub struct BlockInputs<'a> {
    /// `[B, temb]`.
    pub temb: &'a Tensor,
    /// `[B, L, D]`.
    pub text: &'a Tensor,
    pub video: VideoShape,
}

/// What the blocks of one UNet share.
#[derive(Debug, Clone, Copy)]
pub struct BlockSettings {
    pub resnet: ResnetSettings,
    pub cross_attention_dim: usize,
}

/// The spatial transformer (`attentions.i`) and temporal transformer (`temp_attentions.i`) of a
/// layer.
#[derive(Debug)]
struct Transformers {
    spatial: Transformer2D,
    temporal: TransformerTemporal,
}

impl Transformers {
    fn new(
        channels: usize,
        head_dim: usize,
        settings: BlockSettings,
        stage: &str,
        index: usize,
        vb: &VarBuilder,
        sites: &mut SiteRegistry,
    ) -> Result<Self> {
        let spec = TransformerSpec {
            channels,
            heads: channels / head_dim,
            head_dim,
            groups: settings.resnet.groups,
            stage,
        };
        Ok(Self {
            spatial: Transformer2D::new(
                spec,
                settings.cross_attention_dim,
                vb.pp("attentions").pp(index),
                sites,
            )?,
            temporal: TransformerTemporal::new(spec, vb.pp("temp_attentions").pp(index), sites)?,
        })
    }

    fn forward(&self, x: &Tensor, inputs: &BlockInputs, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let x = self.spatial.forward(x, inputs.text, inputs.video, ctx)?;
        self.temporal.forward(&x, inputs.video, ctx)
    }
}

/// resnet → temporal conv → (spatial transformer → temporal transformer).
#[derive(Debug)]
struct Layer {
    resnet: ResnetBlock2D,
    temp_conv: TemporalConvLayer,
    transformers: Option<Transformers>,
}

impl Layer {
    /// Layer `index` of a block described by `spec`, taking `in_channels` channels.
    fn new(
        in_channels: usize,
        spec: &BlockSpec,
        settings: BlockSettings,
        index: usize,
        vb: &VarBuilder,
        sites: &mut SiteRegistry,
    ) -> Result<Self> {
        let out_channels = spec.out_channels;
        let resnet = ResnetBlock2D::new(
            in_channels,
            out_channels,
            settings.resnet,
            1.0,
            vb.pp("resnets").pp(index),
        )?;
        let temp_conv = TemporalConvLayer::new(
            out_channels,
            settings.resnet.groups,
            vb.pp("temp_convs").pp(index),
        )?;
        let transformers = match spec.kind {
            BlockKind::CrossAttention => Some(Transformers::new(
                out_channels,
                spec.head_dim,
                settings,
                spec.stage,
                index,
                vb,
                sites,
            )?),
            BlockKind::Plain => None,
        };
        Ok(Self {
            resnet,
            temp_conv,
            transformers,
        })
    }

    fn forward(&self, x: &Tensor, inputs: &BlockInputs, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let x = self.resnet.forward(x, inputs.temb, inputs.video)?;
        let x = self.temp_conv.forward(&x, inputs.video)?;
        match &self.transformers {
            Some(transformers) => transformers.forward(&x, inputs, ctx),
            None => Ok(x),
        }
    }
}

/// `CrossAttnDownBlock3D` / `DownBlock3D`.
#[derive(Debug)]
pub struct DownBlock {
    layers: Vec<Layer>,
    downsampler: Option<Downsample2D>,
}

/// Where a block sits and what it is.
#[derive(Debug, Clone, Copy)]
pub struct BlockSpec<'a> {
    pub kind: BlockKind,
    pub in_channels: usize,
    pub out_channels: usize,
    pub num_layers: usize,
    pub head_dim: usize,
    pub stage: &'a str,
}

impl DownBlock {
    pub fn new(
        spec: BlockSpec,
        downsample_padding: Option<usize>,
        settings: BlockSettings,
        vb: VarBuilder,
        sites: &mut SiteRegistry,
    ) -> Result<Self> {
        let layers = (0..spec.num_layers)
            .map(|i| {
                let in_channels = if i == 0 {
                    spec.in_channels
                } else {
                    spec.out_channels
                };
                Layer::new(in_channels, &spec, settings, i, &vb, sites)
            })
            .collect::<Result<_>>()?;
        let downsampler = downsample_padding
            .map(|padding| Downsample2D::new(spec.out_channels, padding, vb.pp("downsamplers.0")))
            .transpose()?;
        Ok(Self {
            layers,
            downsampler,
        })
    }

    /// Returns the block output and the states the up path will consume (one per layer, plus the
    /// downsampled output).
    pub fn forward(
        &self,
        x: &Tensor,
        inputs: &BlockInputs,
        ctx: &mut ForwardCtx,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut x = x.clone();
        let mut states = Vec::with_capacity(self.layers.len() + 1);
        for layer in &self.layers {
            x = layer.forward(&x, inputs, ctx)?;
            states.push(x.clone());
        }
        if let Some(downsampler) = &self.downsampler {
            x = downsampler.forward(&x, inputs.video.batch)?;
            states.push(x.clone());
        }
        Ok((x, states))
    }
}

/// `UNetMidBlock3DCrossAttn` with one layer: resnet, temporal conv, then spatial transformer,
/// temporal transformer, resnet, temporal conv.
#[derive(Debug)]
pub struct MidBlock {
    resnet_in: ResnetBlock2D,
    temp_conv_in: TemporalConvLayer,
    transformers: Transformers,
    resnet_out: ResnetBlock2D,
    temp_conv_out: TemporalConvLayer,
}

impl MidBlock {
    pub fn new(
        channels: usize,
        head_dim: usize,
        output_scale_factor: f64,
        settings: BlockSettings,
        vb: VarBuilder,
        sites: &mut SiteRegistry,
    ) -> Result<Self> {
        let groups = settings.resnet.groups;
        let resnet = |i: usize| {
            ResnetBlock2D::new(
                channels,
                channels,
                settings.resnet,
                output_scale_factor,
                vb.pp("resnets").pp(i),
            )
        };
        let resnet_in = resnet(0)?;
        let temp_conv_in = TemporalConvLayer::new(channels, groups, vb.pp("temp_convs.0"))?;
        let transformers = Transformers::new(channels, head_dim, settings, "mid", 0, &vb, sites)?;
        Ok(Self {
            resnet_in,
            temp_conv_in,
            transformers,
            resnet_out: resnet(1)?,
            temp_conv_out: TemporalConvLayer::new(channels, groups, vb.pp("temp_convs.1"))?,
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        inputs: &BlockInputs,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let x = self.resnet_in.forward(x, inputs.temb, inputs.video)?;
        let x = self.temp_conv_in.forward(&x, inputs.video)?;
        let x = self.transformers.forward(&x, inputs, ctx)?;
        let x = self.resnet_out.forward(&x, inputs.temb, inputs.video)?;
        self.temp_conv_out.forward(&x, inputs.video)
    }
}

/// `CrossAttnUpBlock3D` / `UpBlock3D`: each layer first concatenates a skip state.
#[derive(Debug)]
pub struct UpBlock {
    layers: Vec<Layer>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// `spec.in_channels` is the width of the deepest skip state this block consumes and
    /// `prev_output_channels` the width of the input coming up from below.
    pub fn new(
        spec: BlockSpec,
        prev_output_channels: usize,
        add_upsample: bool,
        settings: BlockSettings,
        vb: VarBuilder,
        sites: &mut SiteRegistry,
    ) -> Result<Self> {
        let layers = (0..spec.num_layers)
            .map(|i| {
                let skip_channels = if i == spec.num_layers - 1 {
                    spec.in_channels
                } else {
                    spec.out_channels
                };
                let input_channels = if i == 0 {
                    prev_output_channels
                } else {
                    spec.out_channels
                };
                Layer::new(
                    input_channels + skip_channels,
                    &spec,
                    settings,
                    i,
                    &vb,
                    sites,
                )
            })
            .collect::<Result<_>>()?;
        let upsampler = if add_upsample {
            Some(Upsample2D::new(spec.out_channels, vb.pp("upsamplers.0"))?)
        } else {
            None
        };
        Ok(Self { layers, upsampler })
    }

    /// How many skip states the block consumes.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// `skips` in the order they were produced; the last one is consumed first.
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        upsample_size: Option<(usize, usize)>,
        inputs: &BlockInputs,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        if skips.len() != self.layers.len() {
            candle_core::bail!(
                "up block got {} skip states for {} layers",
                skips.len(),
                self.layers.len()
            )
        }
        let mut x = x.clone();
        for (layer, skip) in self.layers.iter().zip(skips.iter().rev()) {
            x = Tensor::cat(&[&x, skip], 1)?;
            x = layer.forward(&x, inputs, ctx)?;
        }
        match &self.upsampler {
            Some(upsampler) => upsampler.forward(&x, upsample_size, inputs.video.batch),
            None => Ok(x),
        }
    }
}
