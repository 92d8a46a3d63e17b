//! Pattern matching on ONNX protobufs, shared by the engines' fusions ([`crate::engine::tract::attention`]
//! for tract, [`crate::onnx::passes::ort`] for ONNX Runtime): the graph's use counts, and the exported
//! attention chain `Einsum(q, k) -> Mul(scale) -> [Where(mask)] -> Softmax -> Einsum(., v)`.

use std::collections::HashMap;
use tract_onnx::pb::{tensor_proto::DataType, GraphProto, ModelProto, NodeProto, TensorProto};

/// One attention chain of a graph: scores `q [b n h d], k [b m h d] -> [b h n m]`, scaled by
/// one number, optionally masked by `Where`, softmaxed along the keys and multiplied with
/// `v [b m h e]` into `[b n h e]`. Every tensor between its nodes has one consumer.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionChain {
    /// Node indices: scores product, scale `Mul`, `Where` (when masked), `Softmax`, values
    /// product (last).
    pub nodes: Vec<usize>,
    /// `[q, k, v, scale]`, then `cond, fill` when masked.
    pub inputs: Vec<String>,
    /// Masked: the fill replaces the scores where `cond` is true (`Where(cond, fill, scores)`),
    /// else where it is false.
    pub fill_when: bool,
}

impl AttentionChain {
    /// The chain's output (the values product's).
    pub fn output<'g>(&self, g: &'g GraphProto) -> &'g str {
        &g.node[*self.nodes.last().expect("a chain has nodes")].output[0]
    }
}

/// The four single-letter axis labels of each term of an `Einsum` equation `a,b->c`.
fn einsum_terms(node: &NodeProto) -> Option<[[u8; 4]; 3]> {
    let eq = node.attribute.iter().find(|a| a.name == "equation")?;
    let eq: Vec<u8> =
        eq.s.iter()
            .copied()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
    let eq = std::str::from_utf8(&eq).ok()?;
    let (lhs, out) = eq.split_once("->")?;
    let (a, b) = lhs.split_once(',')?;
    let term = |s: &str| -> Option<[u8; 4]> {
        let t: [u8; 4] = s.as_bytes().try_into().ok()?;
        let distinct = (0..4).all(|i| (i + 1..4).all(|j| t[i] != t[j]));
        (t.iter().all(u8::is_ascii_alphabetic) && distinct).then_some(t)
    };
    Some([term(a)?, term(b)?, term(out)?])
}

/// `q [b n h d], k [b m h d] -> scores [b h n m]`.
fn is_scores_product(node: &NodeProto) -> bool {
    let Some([[b, n, h, d], k, o]) = einsum_terms(node) else {
        return false;
    };
    let m = k[1];
    ![b, n, h, d].contains(&m) && k == [b, m, h, d] && o == [b, h, n, m]
}

/// `weights [b h n m], v [b m h e] -> out [b n h e]`.
fn is_values_product(node: &NodeProto) -> bool {
    let Some([[b, h, n, m], v, o]) = einsum_terms(node) else {
        return false;
    };
    let e = v[3];
    ![b, h, n, m].contains(&e) && v == [b, m, h, e] && o == [b, n, h, e]
}

/// Every attention chain of `g` (see [`AttentionChain`]): the equations are `bnhd,bmhd->bhnm`
/// and `bhnm,bmhd->bnhd` (any letters in those roles), the scale and the fill value are provably
/// single numbers (initializers, constants, or arithmetic on them and on single dimensions of a
/// shape), and the softmax is along the last axis (`opset` is the model's default-domain opset:
/// Softmax's axis defaults to the last one from 13).
pub fn find_attention_chains(g: &GraphProto, opset: i64) -> Vec<AttentionChain> {
    let ix = GraphIndex::new(g);
    let sole_consumer = |name: &str| ix.sole_consumer(name);
    let plain = |n: &NodeProto, op: &str| n.op_type == op && n.domain.is_empty();
    let mut chains = vec![];
    for (ei, e1) in g.node.iter().enumerate() {
        if !plain(e1, "Einsum") || e1.input.len() != 2 || !is_scores_product(e1) {
            continue;
        }
        let Some(mi) = sole_consumer(&e1.output[0]) else {
            continue;
        };
        let mul = &g.node[mi];
        if !plain(mul, "Mul") || mul.input.len() != 2 {
            continue;
        }
        let scale = if mul.input[0] == e1.output[0] {
            &mul.input[1]
        } else {
            &mul.input[0]
        };
        if !ix.is_single(scale, 0) {
            continue;
        }
        let Some(mut next) = sole_consumer(&mul.output[0]) else {
            continue;
        };
        let mut nodes = vec![ei, mi];
        let mut inputs = vec![
            e1.input[0].clone(),
            e1.input[1].clone(),
            String::new(),
            scale.clone(),
        ];
        let mut fill_when = true;
        let w = &g.node[next];
        if plain(w, "Where") && w.input.len() == 3 {
            let (fill, when) = if w.input[2] == mul.output[0] {
                (&w.input[1], true)
            } else if w.input[1] == mul.output[0] {
                (&w.input[2], false)
            } else {
                continue;
            };
            if !ix.is_single(fill, 0) || w.input[0] == mul.output[0] {
                continue;
            }
            inputs.push(w.input[0].clone());
            inputs.push(fill.clone());
            fill_when = when;
            nodes.push(next);
            let Some(n) = sole_consumer(&w.output[0]) else {
                continue;
            };
            next = n;
        }
        let sm = &g.node[next];
        let axis = sm.attribute.iter().find(|a| a.name == "axis").map(|a| a.i);
        let last_axis = match axis {
            Some(a) => a == -1 || a == 3,
            None => opset >= 13,
        };
        if !plain(sm, "Softmax") || !last_axis {
            continue;
        }
        nodes.push(next);
        let Some(e2i) = sole_consumer(&sm.output[0]) else {
            continue;
        };
        let e2 = &g.node[e2i];
        if !plain(e2, "Einsum")
            || e2.input.len() != 2
            || e2.input[0] != sm.output[0]
            || !is_values_product(e2)
        {
            continue;
        }
        inputs[2] = e2.input[1].clone();
        nodes.push(e2i);
        chains.push(AttentionChain {
            nodes,
            inputs,
            fill_when,
        });
    }
    chains
}

/// The value of a one-element tensor with inline data (float, uint8 or int8), if it is one.
pub fn scalar_value(t: &TensorProto) -> Option<f64> {
    if t.dims.iter().product::<i64>() != 1 {
        return None;
    }
    let dt = DataType::try_from(t.data_type).ok()?;
    match dt {
        DataType::Float => t
            .float_data
            .first()
            .copied()
            .or_else(|| Some(f32::from_le_bytes(t.raw_data.get(..4)?.try_into().ok()?)))
            .map(f64::from),
        DataType::Uint8 => t
            .int32_data
            .first()
            .map(|v| *v as f64)
            .or_else(|| t.raw_data.first().map(|v| *v as f64)),
        DataType::Int8 => t
            .int32_data
            .first()
            .map(|v| *v as f64)
            .or_else(|| t.raw_data.first().map(|v| *v as i8 as f64)),
        _ => None,
    }
}

/// The model's default-domain opset (1 if it declares none).
pub fn default_opset(m: &ModelProto) -> i64 {
    m.opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(1, |o| o.version)
}

/// Replace nodes of `g`: each `(at, nodes)` puts `nodes` in node `at`'s place (so they may read
/// anything produced before it and feed anything after it); the nodes in `drop` go.
pub fn splice(g: &mut GraphProto, edits: Vec<(usize, Vec<NodeProto>)>, drop: &[usize]) {
    let mut edits: HashMap<usize, Vec<NodeProto>> = edits.into_iter().collect();
    let old = std::mem::take(&mut g.node);
    for (i, n) in old.into_iter().enumerate() {
        if let Some(new) = edits.remove(&i) {
            g.node.extend(new);
        } else if !drop.contains(&i) {
            g.node.push(n);
        }
    }
}

/// Use counts, producers and consumers of a graph's tensors, and what can be read off its
/// constants.
pub struct GraphIndex<'g> {
    /// The graph.
    pub g: &'g GraphProto,
    uses: HashMap<&'g str, usize>,
    producer: HashMap<&'g str, usize>,
    consumers: HashMap<&'g str, Vec<usize>>,
}

impl<'g> GraphIndex<'g> {
    /// Index `g`.
    pub fn new(g: &'g GraphProto) -> GraphIndex<'g> {
        let mut uses: HashMap<&str, usize> = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            for inp in &n.input {
                *uses.entry(inp.as_str()).or_default() += 1;
                consumers.entry(inp.as_str()).or_default().push(i);
            }
        }
        for o in &g.output {
            *uses.entry(o.name.as_str()).or_default() += 1;
        }
        let producer = g
            .node
            .iter()
            .enumerate()
            .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
            .collect();
        GraphIndex {
            g,
            uses,
            producer,
            consumers,
        }
    }

    /// The node reading `name`, if it is its only reader (and not a graph output).
    pub fn sole_consumer(&self, name: &str) -> Option<usize> {
        (self.uses.get(name) == Some(&1)).then(|| self.consumers.get(name).map(|c| c[0]))?
    }

    /// How many nodes (and graph outputs) read `name`.
    pub fn uses(&self, name: &str) -> usize {
        self.uses.get(name).copied().unwrap_or(0)
    }

    /// The index of the node producing `name`.
    pub fn producer_index(&self, name: &str) -> Option<usize> {
        self.producer.get(name).copied()
    }

    /// The node producing `name`.
    pub fn producer(&self, name: &str) -> Option<&'g NodeProto> {
        self.producer.get(name).map(|&i| &self.g.node[i])
    }

    /// The initializer `name`.
    pub fn initializer(&self, name: &str) -> Option<&'g TensorProto> {
        self.g.initializer.iter().find(|t| t.name == name)
    }

    /// A constant tensor: an initializer or a `Constant` node's `value`.
    pub fn constant(&self, name: &str) -> Option<&'g TensorProto> {
        self.initializer(name).or_else(|| {
            let p = self.producer(name)?;
            (p.op_type == "Constant" && p.domain.is_empty())
                .then(|| p.attribute.iter().find(|a| a.name == "value")?.t.as_ref())?
        })
    }

    /// The values of a small constant integer vector (inline data).
    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        let t = self.constant(name)?;
        match DataType::try_from(t.data_type).ok()? {
            DataType::Int64 if !t.raw_data.is_empty() => Some(
                t.raw_data
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            ),
            DataType::Int64 => Some(t.int64_data.clone()),
            _ => None,
        }
    }

    /// The value of a one-element float constant (inline data).
    pub fn single_f32(&self, name: &str) -> Option<f32> {
        if let Some(p) = self.producer(name) {
            if let Some(a) = p.attribute.iter().find(|a| a.name == "value_float") {
                return (p.op_type == "Constant").then_some(a.f);
            }
        }
        let t = self.constant(name)?;
        if t.data_type != DataType::Float as i32 {
            return None;
        }
        scalar_value(t).map(|v| v as f32)
    }

    /// The rank of `name` where the graph alone fixes it: constants, and element-wise operators
    /// and `Slice`s of tensors of known rank (broadcasting ones take the largest).
    pub fn rank(&self, name: &str) -> Option<usize> {
        self.rank_at(name, 0)
    }

    fn rank_at(&self, name: &str, depth: usize) -> Option<usize> {
        if depth > 32 {
            return None;
        }
        if let Some(t) = self.constant(name) {
            return Some(t.dims.len());
        }
        let p = self.producer(name).filter(|p| p.domain.is_empty())?;
        match p.op_type.as_str() {
            "Cast" | "Not" | "Neg" | "Abs" | "Identity" | "Sqrt" | "Exp" | "Slice" => {
                self.rank_at(p.input.first()?, depth + 1)
            }
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Equal" | "Less" | "Greater" | "And" | "Or"
            | "Xor" | "Where" => p
                .input
                .iter()
                .map(|i| self.rank_at(i, depth + 1))
                .try_fold(0, |r, x| Some(r.max(x?))),
            _ => None,
        }
    }

    /// `name` with any chain of `Cast`s before it skipped.
    pub fn through_casts(&self, mut name: &'g str) -> &'g str {
        for _ in 0..16 {
            match self.producer(name) {
                Some(p) if p.op_type == "Cast" && p.domain.is_empty() => name = &p.input[0],
                _ => break,
            }
        }
        name
    }

    /// The tensor that element `idx` of the shape vector `name` is built from: the element itself
    /// when the vector is constant (`Ok`), or the one-element piece a `Concat` takes it from
    /// (`Err(piece)`, the `Unsqueeze`d tensor).
    pub fn shape_element(&self, name: &str, idx: usize) -> Option<Result<i64, &'g str>> {
        if let Some(v) = self.ints(name) {
            return v.get(idx).copied().map(Ok);
        }
        let p = self.producer(name)?;
        if p.op_type != "Concat" || !p.domain.is_empty() {
            return None;
        }
        let mut at = 0;
        for piece in &p.input {
            if let Some(v) = self.ints(piece) {
                if idx < at + v.len() {
                    return Some(Ok(v[idx - at]));
                }
                at += v.len();
                continue;
            }
            // A scalar unsqueezed into a one-element vector.
            let u = self.producer(piece)?;
            if u.op_type != "Unsqueeze" {
                return None;
            }
            if idx == at {
                return Some(Err(&u.input[0]));
            }
            at += 1;
        }
        None
    }

    /// One element, at most rank 4 (so it broadcasts into the scores without changing their
    /// shape): an initializer or `Constant`, elementwise arithmetic on such tensors, or one
    /// dimension picked out of a `Shape`.
    pub fn is_single(&self, name: &str, depth: usize) -> bool {
        let one = |dims: &[i64]| dims.len() <= 4 && dims.iter().product::<i64>() == 1;
        if depth > 32 {
            return false;
        }
        if let Some(t) = self.g.initializer.iter().find(|t| t.name == name) {
            return one(&t.dims);
        }
        let Some(p) = self.producer(name) else {
            return false;
        };
        if !p.domain.is_empty() {
            return false;
        }
        match p.op_type.as_str() {
            "Constant" => p.attribute.iter().any(|a| match a.name.as_str() {
                "value" => a.t.as_ref().is_some_and(|t| one(&t.dims)),
                "value_float" | "value_int" => true,
                _ => false,
            }),
            "Cast" | "Pow" | "Sqrt" | "Reciprocal" | "Div" | "Mul" | "Add" | "Sub" | "Neg"
            | "Identity" => p.input.iter().all(|i| self.is_single(i, depth + 1)),
            // A scalar index into a shape (rank 1) gives a scalar.
            "Gather" => {
                p.input.len() == 2
                    && self
                        .producer
                        .get(p.input[0].as_str())
                        .is_some_and(|&s| self.g.node[s].op_type == "Shape")
                    && self.is_rank0_constant(&p.input[1])
            }
            _ => false,
        }
    }

    fn is_rank0_constant(&self, name: &str) -> bool {
        if let Some(t) = self.g.initializer.iter().find(|t| t.name == name) {
            return t.dims.is_empty();
        }
        self.producer(name).is_some_and(|p| {
            p.op_type == "Constant"
                && p.attribute.iter().any(|a| match a.name.as_str() {
                    "value" => a.t.as_ref().is_some_and(|t| t.dims.is_empty()),
                    "value_int" => true,
                    _ => false,
                })
        })
    }
}
