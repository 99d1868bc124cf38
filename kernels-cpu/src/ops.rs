//! f32 helpers for the transformer (rmsnorm, softmax, rope, silu, gelu, ...).
