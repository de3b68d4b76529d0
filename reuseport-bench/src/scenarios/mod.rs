//! One module per scenario.

pub mod cost;
pub mod fairness;
