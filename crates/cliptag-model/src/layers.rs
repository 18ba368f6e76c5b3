//! The transformer pieces both towers share: linear layers, attention, MLP, encoder.
//!
//! Tensor names follow the Hugging Face checkpoint layout (`self_attn.q_proj`, `mlp.fc1`,
//! `layer_norm1`, ...), so a directory saved by `transformers` loads unchanged.

use std::sync::Arc;

use candle_core::{D, Module, Tensor};

use crate::config::Activation;
use crate::error::Result;
use crate::kernels::{self, PackedLinear};
use crate::profile::stage;
use crate::weights::Weights;

/// `y = x W^T + b` on inputs of any rank (flattened to a 2-D matmul).
///
/// On the CPU with AVX-512 the weight is packed once at load for the matmul kernels
/// (f32 or bf16, as the checkpoint's [`MatmulPlan`](crate::kernels::MatmulPlan) says).
/// Elsewhere it is kept transposed and contiguous (`[in, out]`): the generic matmul runs
/// several times faster on a row-major right-hand side than on a transposed view.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight: LinearWeight,
}

#[derive(Debug, Clone)]
enum LinearWeight {
    Transposed {
        weight_t: Tensor,
        bias: Option<Tensor>,
    },
    Packed(Arc<PackedLinear>),
}

impl Linear {
    pub(crate) fn load(w: &Weights, prefix: &str, input: usize, output: usize) -> Result<Self> {
        Self::from_parts(
            w,
            w.get(&format!("{prefix}.weight"), &[output, input])?,
            Some(w.get(&format!("{prefix}.bias"), &[output])?),
        )
    }

    pub(crate) fn load_no_bias(
        w: &Weights,
        prefix: &str,
        input: usize,
        output: usize,
    ) -> Result<Self> {
        Self::from_parts(
            w,
            w.get(&format!("{prefix}.weight"), &[output, input])?,
            None,
        )
    }

    /// From a checkpoint weight `[out, in]` and optional bias `[out]`, held as `w`'s plan
    /// says.
    pub(crate) fn from_parts(w: &Weights, weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let weight_t = weight.t()?.contiguous()?;
        let weight = match w.plan().packed {
            Some(ty) => {
                LinearWeight::Packed(Arc::new(PackedLinear::new(&weight_t, bias.as_ref(), ty)?))
            }
            None => LinearWeight::Transposed { weight_t, bias },
        };
        Ok(Self { weight })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_fused(x, false, None)
    }

    /// `residual + layer(x)`, the sum made in the matmul's store where the weight is
    /// packed.
    pub(crate) fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.forward_fused(x, false, Some(residual))
    }

    /// The layer, with `quick_gelu` applied in the same pass as the bias when asked, and
    /// `residual` (of the output's shape) added last.
    pub(crate) fn forward_fused(
        &self,
        x: &Tensor,
        quick_gelu: bool,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let dims = x.dims();
        let input = dims[dims.len() - 1];
        let rows = x.elem_count() / input.max(1);
        let flat = x.reshape((rows, input))?;
        let (y, fused_residual) = match &self.weight {
            LinearWeight::Packed(packed) => {
                let res = residual
                    .map(|r| r.reshape((rows, packed.out_features())))
                    .transpose()?;
                (packed.forward(&flat, quick_gelu, res.as_ref())?, true)
            }
            LinearWeight::Transposed { weight_t, bias } => (
                kernels::linear(&flat, weight_t, bias.as_ref(), quick_gelu)?,
                false,
            ),
        };
        let mut out_dims = dims.to_vec();
        out_dims[dims.len() - 1] = y.dim(1)?;
        let y = y.reshape(out_dims)?;
        match residual {
            Some(r) if !fused_residual => kernels::add(y, r),
            _ => Ok(y),
        }
    }
}

/// Layer norm over the last dimension: the fused CPU kernel for contiguous f32, candle's
/// op elsewhere.
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    /// The same layer in candle, for what the kernel does not take.
    generic: candle_nn::LayerNorm,
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match kernels::layer_norm(x, &self.weight, &self.bias, self.eps) {
            Ok(Some(y)) => Ok(y),
            Ok(None) => self.generic.forward(x),
            Err(e) => Err(candle_core::Error::Msg(e.to_string())),
        }
    }
}

pub(crate) fn layer_norm(w: &Weights, prefix: &str, size: usize, eps: f64) -> Result<LayerNorm> {
    let weight = w.get(&format!("{prefix}.weight"), &[size])?;
    let bias = w.get(&format!("{prefix}.bias"), &[size])?;
    Ok(LayerNorm {
        generic: candle_nn::LayerNorm::new(weight.clone(), bias.clone(), eps),
        weight,
        bias,
        eps,
    })
}

fn activate(act: Activation, x: Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::QuickGelu => crate::kernels::quick_gelu(x)?,
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
        Activation::Relu => x.relu()?,
        Activation::Silu => x.silu()?,
    })
}

/// Shapes of one encoder, common to both towers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EncoderShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub layers: usize,
    pub act: Activation,
    pub eps: f64,
}

/// Multi-head self-attention with the query, key and value projections fused into one
/// matmul (loaded from the three separate checkpoint tensors), and the `1/sqrt(d)` scale
/// folded into the query projection.
#[derive(Debug, Clone)]
struct Attention {
    qkv: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn load(w: &Weights, prefix: &str, shape: &EncoderShape) -> Result<Self> {
        let d = shape.hidden;
        let head_dim = d / shape.heads;
        let scale = (head_dim as f64).powf(-0.5);
        let part = |name: &str| -> Result<(Tensor, Tensor)> {
            Ok((
                w.get(&format!("{prefix}.{name}.weight"), &[d, d])?,
                w.get(&format!("{prefix}.{name}.bias"), &[d])?,
            ))
        };
        let (qw, qb) = part("q_proj")?;
        let (kw, kb) = part("k_proj")?;
        let (vw, vb) = part("v_proj")?;
        let weight = Tensor::cat(&[(qw * scale)?, kw, vw], 0)?;
        let bias = Tensor::cat(&[(qb * scale)?, kb, vb], 0)?;
        Ok(Self {
            qkv: Linear::from_parts(w, weight, Some(bias))?,
            out: Linear::load(w, &format!("{prefix}.out_proj"), d, d)?,
            heads: shape.heads,
        })
    }

    /// `residual + attention(x)`, `x`: `[batch, seq, hidden]`; `causal` stops positions
    /// from seeing later ones.
    fn forward(&self, x: &Tensor, residual: &Tensor, causal: bool) -> Result<Tensor> {
        let dev = x.device();
        let qkv = stage("qkv projection", dev, || self.qkv.forward(x))?;
        let context = stage("attention", dev, || self.attend(&qkv, causal))?;
        stage("output projection + residual", dev, || {
            self.out.forward_residual(&context, residual)
        })
    }

    /// Every position's attention output from the fused projection `[batch, seq, 3d]`.
    fn attend(&self, qkv: &Tensor, causal: bool) -> Result<Tensor> {
        if let Some(context) = kernels::attention(qkv, self.heads, causal)? {
            return Ok(context);
        }
        let (b, t, three_d) = qkv.dims3()?;
        let d = three_d / 3;
        let head_dim = d / self.heads;
        let qkv = qkv
            .reshape((b, t, 3, self.heads, head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let mut scores = q.matmul(&k.t()?)?;
        if causal {
            scores = scores.broadcast_add(&causal_mask(t, scores.dtype(), scores.device())?)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        Ok(probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, d))?)
    }

    /// The output at one position per sequence (`positions[i]` of sequence `i`), as
    /// `[batch, 1, hidden]`: every key and value is needed, one query per sequence is.
    /// With `causal`, that query sees the positions up to its own.
    fn forward_at(
        &self,
        x: &Tensor,
        residual: &Tensor,
        positions: &[usize],
        causal: bool,
    ) -> Result<Tensor> {
        let dev = x.device();
        let qkv = stage("qkv projection", dev, || self.qkv.forward(x))?;
        let context = stage("attention", dev, || self.attend_at(&qkv, positions, causal))?;
        stage("output projection + residual", dev, || {
            self.out.forward_residual(&context, residual)
        })
    }

    /// The attention output at `positions` only, `[batch, 1, d]`, from the fused
    /// projection of every position.
    fn attend_at(&self, qkv: &Tensor, positions: &[usize], causal: bool) -> Result<Tensor> {
        let (b, t, three_d) = qkv.dims3()?;
        let d = three_d / 3;
        let head_dim = d / self.heads;
        let split = |part: &Tensor, rows: usize| -> Result<Tensor> {
            Ok(part
                .reshape((b, rows, self.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = gather(qkv, positions)?.narrow(2, 0, d)?;
        // [b, heads, 1, hd] · [b, heads, hd, t] -> [b, heads, 1, t]
        let mut scores = split(&q, 1)?.matmul(&split(&qkv.narrow(2, d, d)?, t)?.t()?)?;
        if causal {
            let mask: Vec<f32> = positions
                .iter()
                .flat_map(|&p| (0..t).map(move |j| if j > p { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            let mask =
                Tensor::from_vec(mask, (b, 1, 1, t), qkv.device())?.to_dtype(scores.dtype())?;
            scores = scores.broadcast_add(&mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        Ok(probs
            .matmul(&split(&qkv.narrow(2, 2 * d, d)?, t)?)?
            .transpose(1, 2)?
            .reshape((b, 1, d))?)
    }
}

/// Row `positions[i]` of each sequence `i` of `x` `[batch, seq, width]`: `[batch, 1, width]`.
fn gather(x: &Tensor, positions: &[usize]) -> Result<Tensor> {
    let (b, t, w) = x.dims3()?;
    let rows: Vec<u32> = positions
        .iter()
        .enumerate()
        .map(|(i, &p)| (i * t + p) as u32)
        .collect();
    let rows = Tensor::from_vec(rows, b, x.device())?;
    Ok(x.reshape((b * t, w))?
        .index_select(&rows, 0)?
        .reshape((b, 1, w))?)
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    norm1: LayerNorm,
    attention: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl EncoderLayer {
    fn load(w: &Weights, prefix: &str, shape: &EncoderShape) -> Result<Self> {
        Ok(Self {
            norm1: layer_norm(w, &format!("{prefix}.layer_norm1"), shape.hidden, shape.eps)?,
            attention: Attention::load(w, &format!("{prefix}.self_attn"), shape)?,
            norm2: layer_norm(w, &format!("{prefix}.layer_norm2"), shape.hidden, shape.eps)?,
            fc1: Linear::load(
                w,
                &format!("{prefix}.mlp.fc1"),
                shape.hidden,
                shape.intermediate,
            )?,
            fc2: Linear::load(
                w,
                &format!("{prefix}.mlp.fc2"),
                shape.intermediate,
                shape.hidden,
            )?,
            act: shape.act,
        })
    }

    fn forward(&self, x: &Tensor, causal: bool) -> Result<Tensor> {
        let dev = x.device();
        let n = stage("layer norm", dev, || Ok(self.norm1.forward(x)?))?;
        let x = self.attention.forward(&n, x, causal)?;
        self.feed_forward(x)
    }

    /// The block's output at `positions` only, `[batch, 1, hidden]`.
    fn forward_at(&self, x: &Tensor, positions: &[usize], causal: bool) -> Result<Tensor> {
        let dev = x.device();
        let n = stage("layer norm", dev, || Ok(self.norm1.forward(x)?))?;
        let x = self
            .attention
            .forward_at(&n, &gather(x, positions)?, positions, causal)?;
        self.feed_forward(x)
    }

    /// The second half of the block: `x + mlp(norm2(x))`.
    fn feed_forward(&self, x: Tensor) -> Result<Tensor> {
        let dev = x.device();
        let n = stage("layer norm", dev, || Ok(self.norm2.forward(&x)?))?;
        let h = stage("mlp fc1 + activation", dev, || {
            if self.act == Activation::QuickGelu {
                self.fc1.forward_fused(&n, true, None)
            } else {
                activate(self.act, self.fc1.forward(&n)?)
            }
        })?;
        stage("mlp fc2 + residual", dev, || {
            self.fc2.forward_residual(&h, &x)
        })
    }
}

/// A stack of pre-norm transformer blocks (`encoder.layers.N`).
#[derive(Debug, Clone)]
pub(crate) struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    pub(crate) fn load(w: &Weights, prefix: &str, shape: &EncoderShape) -> Result<Self> {
        let layers = (0..shape.layers)
            .map(|i| EncoderLayer::load(w, &format!("{prefix}.layers.{i}"), shape))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// The output at one position per sequence only (`[batch, 1, hidden]`): what the
    /// towers pool (the class token; the end-of-text token). The last block computes keys
    /// and values for every position but the rest only where asked, which leaves out most
    /// of that block's work (about 6% of ViT-B/32's vision encoder) and gives the same
    /// numbers.
    pub(crate) fn forward_at(
        &self,
        x: &Tensor,
        positions: &[usize],
        causal: bool,
    ) -> Result<Tensor> {
        let Some((last, rest)) = self.layers.split_last() else {
            return gather(x, positions);
        };
        let mut x = x.clone();
        for layer in rest {
            x = layer.forward(&x, causal)?;
        }
        last.forward_at(&x, positions, causal)
    }
}

/// Additive mask that stops a position from attending to later positions.
fn causal_mask(
    len: usize,
    dtype: candle_core::DType,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let values: Vec<f32> = (0..len)
        .flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(values, (len, len), device)?.to_dtype(dtype)?)
}

/// L2-normalizes the rows of a `[n, d]` tensor.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}
