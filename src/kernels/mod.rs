//! Numeric kernels behind qwm's fused operators, each with a portable implementation and
//! per-instruction-set variants chosen at run time; one test suite checks every variant against
//! the portable code and a float64 reference.

pub mod attention;
pub mod int8_gemm;
pub mod isa;
pub mod layer_norm;
