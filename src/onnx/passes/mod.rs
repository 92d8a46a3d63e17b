//! Graph rewrites applied to a protobuf before an engine loads it. Each pass leaves the graph's
//! function unchanged (its tests say within what tolerance) and reports what it replaced.

pub mod ort;
