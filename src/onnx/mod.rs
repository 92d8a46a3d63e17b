//! ONNX protobufs: builders and readers ([`proto`]), the graph index and pattern matching shared
//! by the rewrites ([`index`]), weights handed to engines as external data ([`external_data`]),
//! and rewrite passes that need no engine ([`passes`]).

pub mod external_data;
pub mod index;
pub mod passes;
pub mod proto;
