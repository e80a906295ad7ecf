//! One residual layer of the S5 classifier (prenorm → SSM → gate → residual), shared by the
//! model and by the fused evaluation kernel.

use crate::gate::Gate;
use crate::norm::Norm;
use crate::ssm::S5Ssm;

/// One residual layer: `z ↦ z + drop(gate(ssm(norm(z))))`.
#[derive(Clone, Debug)]
pub struct S5Layer {
    /// Prenorm.
    pub norm: Norm,
    /// The SSM (continuous or reduced discrete form).
    pub ssm: S5Ssm,
    /// The gate.
    pub gate: Gate,
}
