use anyhow::{bail, Result};
use candle_core::{DType, Tensor, TensorId, Var};
use std::collections::HashMap;

/// Gradients summed over the micro-batches of one optimizer step.
#[derive(Default)]
pub struct Gradients {
    sums: HashMap<TensorId, Tensor>,
    micro_batches: usize,
}

impl Gradients {
    pub fn new() -> Self {
        Self::default()
    }

    /// Back-propagates one micro-batch's loss and adds the gradients of `vars`. A non-finite
    /// loss is refused before anything is touched. The loss is taken by value so that the
    /// activations only its graph holds are freed during the backward pass (peak memory).
    pub fn accumulate(&mut self, loss: Tensor, vars: &[(String, Var)]) -> Result<()> {
        let value = loss.detach().to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            bail!("the loss is {value}; the micro-batch was skipped and no weight changed");
        }
        let mut store = loss.backward_releasing()?;
        crate::model::decoder::replay_checkpoints(&mut store, vars)?;
        for (_, var) in vars {
            if let Some(g) = store.remove(var.as_tensor()) {
                let sum = match self.sums.remove(&var.id()) {
                    Some(acc) => (acc + g)?,
                    None => g,
                };
                self.sums.insert(var.id(), sum);
            }
        }
        self.micro_batches += 1;
        Ok(())
    }

    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// The summed gradient of `var`, if it received one.
    pub fn get(&self, var: &Var) -> Option<&Tensor> {
        self.sums.get(&var.id())
    }

    pub fn clear(&mut self) {
        self.sums.clear();
        self.micro_batches = 0;
    }
}
