//! Loading without a second copy of the weights: the graph's protobuf is rewritten so that its
//! large initializers become ONNX *external data* pointing back into the graph file itself.
//!
//! Decoding an ONNX file the usual way copies every weight out of the file into the protobuf
//! structure, and the engine then copies it again into its own tensors, so loading peaks at about
//! twice the weights (measured on the full-size predictor under tract: protobuf 77 MiB, then
//! 155 MiB while importing). The rewritten protobuf holds only the graph's structure; each large
//! tensor is described by `location` / `offset` / `length` into the original file, and the engine
//! reads it from the memory map when it builds that tensor (tract: one tensor at a time, through
//! [`MappedResolver`]; ONNX Runtime: by mapping the file, see `--low-mem`).
//!
//! The rewrite walks the protobuf wire format directly (fields are copied byte for byte, only
//! the enclosing lengths are re-encoded), so no weight is copied and nothing but the
//! initializers' `raw_data` changes.

use std::ops::Range;

/// ONNX field numbers used here (onnx.proto3).
const MODEL_GRAPH: u64 = 7;
const GRAPH_INITIALIZER: u64 = 5;
const TENSOR_RAW_DATA: u64 = 9;
const TENSOR_EXTERNAL_DATA: u64 = 13;
const TENSOR_DATA_LOCATION: u64 = 14;
const DATA_LOCATION_EXTERNAL: u64 = 1;

/// Initializers whose `raw_data` is at least this many bytes are moved out.
pub const DEFAULT_MIN_BYTES: usize = 1024;

/// The rewritten protobuf and what it moved out.
#[derive(Debug)]
pub struct Externalized {
    /// The graph's protobuf with large initializers as external data.
    pub proto: Vec<u8>,
    /// Initializers moved out.
    pub tensors: usize,
    /// Bytes of weights left in the file (not in `proto`).
    pub moved_bytes: usize,
}

/// One field of a protobuf message: its number, wire type, the byte range of the whole field
/// (key included) and of its payload (for length-delimited fields).
struct Field {
    number: u64,
    wire: u8,
    whole: Range<usize>,
    payload: Range<usize>,
}

fn varint(b: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b
            .get(*pos)
            .ok_or_else(|| format!("truncated varint at byte {}", *pos))?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(format!("varint longer than 10 bytes before byte {}", *pos))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_len_field(out: &mut Vec<u8>, number: u64, payload: &[u8]) {
    put_varint(out, (number << 3) | 2);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// The fields of the message occupying `range` of `b` (offsets are absolute in `b`).
fn fields(b: &[u8], range: Range<usize>) -> Result<Vec<Field>, String> {
    let mut out = Vec::new();
    let mut pos = range.start;
    while pos < range.end {
        let start = pos;
        let key = varint(b, &mut pos)?;
        let (number, wire) = (key >> 3, (key & 7) as u8);
        if number == 0 {
            return Err(format!("field number 0 at byte {start}"));
        }
        let payload = match wire {
            0 => {
                let s = pos;
                varint(b, &mut pos)?;
                s..pos
            }
            1 => pos..pos + 8,
            5 => pos..pos + 4,
            2 => {
                let len = varint(b, &mut pos)?;
                let len = usize::try_from(len).map_err(|_| format!("length {len} too large"))?;
                let s = pos;
                s..s.checked_add(len)
                    .ok_or_else(|| format!("length {len} overflows at byte {s}"))?
            }
            w => return Err(format!("unsupported wire type {w} at byte {start}")),
        };
        if payload.end > range.end {
            return Err(format!(
                "field {number} at byte {start} runs past its message's end (byte {})",
                range.end
            ));
        }
        pos = payload.end;
        out.push(Field {
            number,
            wire,
            whole: start..pos,
            payload,
        });
    }
    Ok(out)
}

/// Rewrite the ONNX model in `file` so that every initializer with at least `min_bytes` of
/// `raw_data` becomes external data at its own offset in `file`, under the name `location`.
/// Errors describe where the protobuf is malformed.
pub fn externalize(file: &[u8], location: &str, min_bytes: usize) -> Result<Externalized, String> {
    let mut out = Externalized {
        proto: Vec::with_capacity(64 * 1024),
        tensors: 0,
        moved_bytes: 0,
    };
    for f in fields(file, 0..file.len())? {
        if f.number == MODEL_GRAPH && f.wire == 2 {
            let graph = rewrite_graph(file, f.payload, location, min_bytes, &mut out)?;
            put_len_field(&mut out.proto, MODEL_GRAPH, &graph);
        } else {
            out.proto.extend_from_slice(&file[f.whole]);
        }
    }
    Ok(out)
}

fn rewrite_graph(
    file: &[u8],
    range: Range<usize>,
    location: &str,
    min_bytes: usize,
    out: &mut Externalized,
) -> Result<Vec<u8>, String> {
    let mut g = Vec::new();
    for f in fields(file, range)? {
        if f.number == GRAPH_INITIALIZER && f.wire == 2 {
            match rewrite_tensor(file, f.payload.clone(), location, min_bytes)? {
                Some((tensor, moved)) => {
                    put_len_field(&mut g, GRAPH_INITIALIZER, &tensor);
                    out.tensors += 1;
                    out.moved_bytes += moved;
                }
                None => g.extend_from_slice(&file[f.whole]),
            }
        } else {
            g.extend_from_slice(&file[f.whole]);
        }
    }
    Ok(g)
}

/// The tensor's fields without its `raw_data`, plus the external-data description, when its
/// `raw_data` is large enough; `None` to keep it as it is.
fn rewrite_tensor(
    file: &[u8],
    range: Range<usize>,
    location: &str,
    min_bytes: usize,
) -> Result<Option<(Vec<u8>, usize)>, String> {
    let fs = fields(file, range)?;
    if fs.iter().any(|f| f.number == TENSOR_EXTERNAL_DATA) {
        return Err(
            "an initializer keeps its data in a separate file (ONNX external data); a qwm bundle's \
             graphs must hold their weights (the manifest's sha256 covers only the .onnx file)"
                .into(),
        );
    }
    let raw = fs
        .iter()
        .find(|f| f.number == TENSOR_RAW_DATA && f.wire == 2 && f.payload.len() >= min_bytes);
    let Some(raw) = raw else {
        return Ok(None);
    };
    let data = raw.payload.clone();
    let mut t = Vec::new();
    for f in &fs {
        if f.number != TENSOR_RAW_DATA
            && f.number != TENSOR_EXTERNAL_DATA
            && f.number != TENSOR_DATA_LOCATION
        {
            t.extend_from_slice(&file[f.whole.clone()]);
        }
    }
    for (k, v) in [
        ("location", location.to_string()),
        ("offset", data.start.to_string()),
        ("length", data.len().to_string()),
    ] {
        let mut entry = Vec::new();
        put_len_field(&mut entry, 1, k.as_bytes());
        put_len_field(&mut entry, 2, v.as_bytes());
        put_len_field(&mut t, TENSOR_EXTERNAL_DATA, &entry);
    }
    put_varint(&mut t, TENSOR_DATA_LOCATION << 3);
    put_varint(&mut t, DATA_LOCATION_EXTERNAL);
    Ok(Some((t, data.len())))
}

/// tract's external-data reader serving every request from one in-memory graph file (the bundle's
/// memory map), whatever the path: the bytes are copied once, into the tensor being built.
pub struct MappedResolver {
    /// The graph file the offsets refer to.
    pub bytes: std::sync::Arc<memmap2::Mmap>,
}

impl tract_onnx::data_resolver::ModelDataResolver for MappedResolver {
    fn read_bytes_from_path(
        &self,
        buf: &mut Vec<u8>,
        _p: &std::path::Path,
        offset: usize,
        length: Option<usize>,
    ) -> tract_onnx::prelude::TractResult<()> {
        let end = match length {
            Some(l) => offset.checked_add(l),
            None => Some(self.bytes.len()),
        };
        let slice = end
            .and_then(|end| self.bytes.get(offset..end))
            .ok_or_else(|| {
                tract_onnx::prelude::TractError::msg(format!(
                    "external data at {offset}+{length:?} lies outside the {}-byte graph file",
                    self.bytes.len()
                ))
            })?;
        buf.extend_from_slice(slice);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use tract_onnx::pb;

    fn model_with(tensors: Vec<pb::TensorProto>) -> Vec<u8> {
        let model = pb::ModelProto {
            ir_version: 8,
            producer_name: "qwm-test".into(),
            graph: Some(pb::GraphProto {
                name: "g".into(),
                initializer: tensors,
                ..Default::default()
            }),
            ..Default::default()
        };
        model.encode_to_vec()
    }

    fn tensor(name: &str, n: usize) -> pb::TensorProto {
        pb::TensorProto {
            name: name.into(),
            dims: vec![n as i64],
            data_type: 1,
            raw_data: (0..n * 4).map(|i| (i * 7 % 251) as u8).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn large_initializers_point_into_the_file_and_small_ones_stay() {
        let file = model_with(vec![
            tensor("big", 1000),
            tensor("small", 3),
            tensor("big2", 300),
        ]);
        let ext = externalize(&file, "g.onnx", 1024).unwrap();
        assert_eq!(ext.tensors, 2);
        assert_eq!(ext.moved_bytes, 4000 + 1200);
        assert!(ext.proto.len() < 400, "{} bytes", ext.proto.len());
        let orig = pb::ModelProto::decode(&file[..]).unwrap();
        let new = pb::ModelProto::decode(&ext.proto[..]).unwrap();
        assert_eq!(new.producer_name, "qwm-test");
        let (og, ng) = (orig.graph.unwrap(), new.graph.unwrap());
        assert_eq!(og.name, ng.name);
        for (o, n) in og.initializer.iter().zip(&ng.initializer) {
            assert_eq!(
                (&o.name, &o.dims, o.data_type),
                (&n.name, &n.dims, n.data_type)
            );
            if o.name == "small" {
                assert_eq!(o.raw_data, n.raw_data);
                assert!(n.external_data.is_empty());
                continue;
            }
            assert!(n.raw_data.is_empty());
            assert_eq!(n.data_location, Some(1));
            let get = |k: &str| {
                n.external_data
                    .iter()
                    .find(|e| e.key == k)
                    .map(|e| e.value.clone())
                    .unwrap()
            };
            assert_eq!(get("location"), "g.onnx");
            let off: usize = get("offset").parse().unwrap();
            let len: usize = get("length").parse().unwrap();
            assert_eq!(&file[off..off + len], &o.raw_data[..]);
        }
    }

    #[test]
    fn malformed_protobufs_are_errors_not_panics() {
        let file = model_with(vec![tensor("big", 1000)]);
        for cut in [1, 5, 17, file.len() / 2, file.len() - 1] {
            assert!(externalize(&file[..cut], "g", 16).is_err(), "cut at {cut}");
        }
        assert!(externalize(&[0x0b, 0x01], "g", 16).is_err()); // wire type 3 (group)
        assert!(externalize(&[0xff; 12], "g", 16).is_err()); // endless varint
                                                             // a length that overflows usize arithmetic
        let mut b = vec![(7 << 3) | 2];
        put_varint(&mut b, u64::MAX);
        assert!(externalize(&b, "g", 16).is_err());
        assert_eq!(externalize(&[], "g", 16).unwrap().proto.len(), 0);
        // a graph that already uses external data files is refused, not misread
        let mut t = tensor("ext", 0);
        t.external_data.push(pb::StringStringEntryProto {
            key: "location".into(),
            value: "w.bin".into(),
        });
        let e = externalize(&model_with(vec![t]), "g", 16).unwrap_err();
        assert!(e.contains("external data"), "{e}");
    }

    #[test]
    fn the_shipped_wall_graphs_keep_almost_nothing_but_structure() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/wall");
        for f in ["encoder.onnx", "predictor.onnx"] {
            let file = std::fs::read(dir.join(f)).unwrap();
            let ext = externalize(&file, f, DEFAULT_MIN_BYTES).unwrap();
            assert!(ext.tensors > 10, "{f}: {} tensors", ext.tensors);
            assert!(
                ext.moved_bytes as f64 > 0.9 * file.len() as f64,
                "{f}: {} of {} bytes moved",
                ext.moved_bytes,
                file.len()
            );
            let proto = pb::ModelProto::decode(&ext.proto[..]).unwrap();
            let moved = proto
                .graph
                .unwrap()
                .initializer
                .iter()
                .filter(|t| t.data_location == Some(1))
                .count();
            assert_eq!(moved, ext.tensors);
        }
    }
}
