//! Calibration capture: which values to capture, how they are handed over, and two streaming
//! statistics that passes need (GPTQ's `XᵀX`, per-channel mean `|x|`).
//!
//! A sink sees each captured value once per run and must not keep it: statistics are
//! accumulated batch by batch, so memory does not grow with the number of batches.

use crate::error::RuntimeError;
use crate::value::TensorValue;
use compactor_ir::ValueId;

/// A value to capture: by IR id (of the model the session was made from) or by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ValueRef {
    Id(ValueId),
    Name(String),
}

impl From<ValueId> for ValueRef {
    fn from(id: ValueId) -> Self {
        ValueRef::Id(id)
    }
}

impl From<&str> for ValueRef {
    fn from(name: &str) -> Self {
        ValueRef::Name(name.to_string())
    }
}

/// One captured value, lent to a sink for the duration of the call.
pub struct CapturedValue<'a> {
    pub name: &'a str,
    pub id: ValueId,
    /// The reference it was asked for by.
    pub requested: &'a ValueRef,
    pub value: &'a TensorValue,
}

/// Receives captured values, one at a time.
pub trait CaptureSink {
    fn observe(&mut self, captured: &CapturedValue<'_>) -> Result<(), RuntimeError>;
}

impl<F: FnMut(&CapturedValue<'_>) -> Result<(), RuntimeError>> CaptureSink for F {
    fn observe(&mut self, captured: &CapturedValue<'_>) -> Result<(), RuntimeError> {
        self(captured)
    }
}

fn channels_of(captured: &CapturedValue<'_>) -> Result<(usize, Vec<f32>), RuntimeError> {
    let shape = captured.value.shape();
    let Some(&channels) = shape.last() else {
        return Err(RuntimeError::Sink { value: captured.name.to_string(), reason: "a scalar has no channel axis".into() });
    };
    let data = match captured.value.as_f32() {
        Some(view) => view.iter().copied().collect(),
        None => captured.value.to_f32()?.iter().copied().collect(),
    };
    Ok((channels, data))
}

/// Running `XᵀX` (f64) over the last axis of one value: rows are every leading index
/// (batch × tokens), columns the channels. GPTQ's Hessian is `2·XᵀX / rows`.
#[derive(Clone, Debug, Default)]
pub struct GramAccumulator {
    pub channels: usize,
    /// `channels × channels`, row-major.
    pub gram: Vec<f64>,
    pub rows: u64,
}

impl GramAccumulator {
    pub fn add(&mut self, captured: &CapturedValue<'_>) -> Result<(), RuntimeError> {
        let (channels, data) = channels_of(captured)?;
        if self.rows == 0 && self.gram.is_empty() {
            self.channels = channels;
            self.gram = vec![0.0; channels * channels];
        } else if channels != self.channels {
            return Err(RuntimeError::Sink { value: captured.name.to_string(), reason: format!("has {channels} channels, earlier batches had {}", self.channels) });
        }
        for row in data.chunks_exact(channels.max(1)) {
            for (i, &xi) in row.iter().enumerate() {
                if xi == 0.0 {
                    continue;
                }
                let xi = xi as f64;
                let out = &mut self.gram[i * channels..(i + 1) * channels];
                for (o, &xj) in out.iter_mut().zip(row) {
                    *o += xi * xj as f64;
                }
            }
            self.rows += 1;
        }
        Ok(())
    }
}

impl CaptureSink for GramAccumulator {
    fn observe(&mut self, captured: &CapturedValue<'_>) -> Result<(), RuntimeError> {
        self.add(captured)
    }
}

/// Running per-channel mean of `|x|` over the last axis (activation-aware scaling, saliency).
#[derive(Clone, Debug, Default)]
pub struct ChannelAbsMean {
    pub sums: Vec<f64>,
    pub rows: u64,
}

impl ChannelAbsMean {
    pub fn add(&mut self, captured: &CapturedValue<'_>) -> Result<(), RuntimeError> {
        let (channels, data) = channels_of(captured)?;
        if self.sums.is_empty() {
            self.sums = vec![0.0; channels];
        } else if channels != self.sums.len() {
            return Err(RuntimeError::Sink { value: captured.name.to_string(), reason: format!("has {channels} channels, earlier batches had {}", self.sums.len()) });
        }
        for row in data.chunks_exact(channels.max(1)) {
            self.sums.iter_mut().zip(row).for_each(|(s, &x)| *s += x.abs() as f64);
            self.rows += 1;
        }
        Ok(())
    }

    pub fn means(&self) -> Vec<f64> {
        self.sums.iter().map(|s| s / self.rows.max(1) as f64).collect()
    }
}

impl CaptureSink for ChannelAbsMean {
    fn observe(&mut self, captured: &CapturedValue<'_>) -> Result<(), RuntimeError> {
        self.add(captured)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_statistics_equal_the_batch_formulas() {
        let x = TensorValue::from_f32(&[2, 2, 3], &[1.0, -2.0, 0.0, 3.0, 1.0, -1.0, 0.5, 0.5, 2.0, -1.0, 0.0, 1.0]).unwrap();
        let r = ValueRef::Name("x".into());
        // Value ids of a real graph: the statistics read only the values.
        let model = compactor_ir::text::parse("model ir_version=8 opset=[ai.onnx=17]\ngraph g {\n  input %x: f32[1]\n  %y = Relu(%x)\n  output %y\n}\n").unwrap();
        let (x_id, y_id) = (model.graph.main().inputs[0], model.graph.main().outputs[0]);
        let captured = CapturedValue { name: "x", id: x_id, requested: &r, value: &x };
        let mut gram = GramAccumulator::default();
        let mut abs = ChannelAbsMean::default();
        gram.observe(&captured).unwrap();
        abs.observe(&captured).unwrap();
        let rows: Vec<[f64; 3]> = vec![[1.0, -2.0, 0.0], [3.0, 1.0, -1.0], [0.5, 0.5, 2.0], [-1.0, 0.0, 1.0]];
        for i in 0..3 {
            for j in 0..3 {
                let want: f64 = rows.iter().map(|r| r[i] * r[j]).sum();
                assert_eq!(gram.gram[i * 3 + j], want);
            }
        }
        assert_eq!(gram.rows, 4);
        assert_eq!(abs.means(), vec![5.5 / 4.0, 3.5 / 4.0, 4.0 / 4.0]);
        let y = TensorValue::from_f32(&[1, 2], &[1.0, 2.0]).unwrap();
        let bad = CapturedValue { name: "y", id: y_id, requested: &r, value: &y };
        assert!(gram.observe(&bad).unwrap_err().to_string().contains("2 channels"));
    }
}
