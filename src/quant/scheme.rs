//! Quantization schemes as the command line writes them: `float` or
//! `w<bits>[a<bits>][-g<size>][-token]` (e.g. `w8a8`, `w4-g32`, `w3`, `w8a8-token`, `w4a8-g32-token`).

use crate::error::{QwmError, Result};
use serde::{Deserialize, Serialize};

/// Weight bit-widths the study used.
pub const WEIGHT_BITS: &[u32] = &[3, 4, 6, 8];
/// Activation bit-widths the study used.
pub const ACT_BITS: &[u32] = &[4, 6, 8];

/// How one module (encoder or predictor) is quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheme {
    /// Weight bits (None: float weights).
    pub weight_bits: Option<u32>,
    /// Activation bits (None: float activations).
    pub act_bits: Option<u32>,
    /// Group size along the input dimension (None: per output channel).
    pub group: Option<usize>,
    /// Per-token dynamic activations (else per-tensor static).
    pub per_token: bool,
}

impl Scheme {
    /// The float scheme.
    pub const FLOAT: Scheme = Scheme {
        weight_bits: None,
        act_bits: None,
        group: None,
        per_token: false,
    };

    /// Whether anything is quantized.
    pub fn is_float(&self) -> bool {
        self.weight_bits.is_none()
    }

    /// Parse a scheme; `flag` names the command-line flag in errors.
    pub fn parse(s: &str, flag: &str) -> Result<Scheme> {
        let bad = |why: &str| {
            QwmError::Usage(format!(
                "{flag} '{s}': {why} (expected 'float' or w<bits>[a<bits>][-g<size>][-token], e.g. w8a8, w4-g32, w8a8-token)"
            ))
        };
        if s == "float" {
            return Ok(Scheme::FLOAT);
        }
        let mut parts = s.split('-');
        let head = parts.next().unwrap_or("");
        let rest = head
            .strip_prefix('w')
            .ok_or_else(|| bad("must start with 'w'"))?;
        let (wb, ab) = match rest.split_once('a') {
            Some((w, a)) => (w, Some(a)),
            None => (rest, None),
        };
        let weight_bits: u32 = wb
            .parse()
            .map_err(|_| bad("weight bits are not a number"))?;
        if !WEIGHT_BITS.contains(&weight_bits) {
            return Err(bad(&format!("weight bits must be one of {WEIGHT_BITS:?}")));
        }
        let act_bits = match ab {
            Some(a) => {
                let b: u32 = a
                    .parse()
                    .map_err(|_| bad("activation bits are not a number"))?;
                if !ACT_BITS.contains(&b) {
                    return Err(bad(&format!("activation bits must be one of {ACT_BITS:?}")));
                }
                Some(b)
            }
            None => None,
        };
        let (mut group, mut per_token) = (None, false);
        for p in parts {
            if let Some(g) = p.strip_prefix('g') {
                if group.is_some() || per_token {
                    return Err(bad("'-g<size>' must come once, before '-token'"));
                }
                let g: usize = g.parse().map_err(|_| bad("group size is not a number"))?;
                if !(2..=1 << 16).contains(&g) {
                    return Err(bad("group size must be in 2..=65536"));
                }
                group = Some(g);
            } else if p == "token" {
                if per_token {
                    return Err(bad("'-token' given twice"));
                }
                per_token = true;
            } else {
                return Err(bad(&format!("unknown part '-{p}'")));
            }
        }
        if per_token && act_bits.is_none() {
            return Err(bad("'-token' needs activation bits (a<bits>)"));
        }
        let scheme = Scheme {
            weight_bits: Some(weight_bits),
            act_bits,
            group,
            per_token,
        };
        // One spelling per scheme: `w+8`, `w08` or `w4-g+32` would parse as numbers, but a study
        // would list them as cells of their own.
        let canonical = scheme.to_string();
        if canonical != s {
            return Err(bad(&format!("write it as '{canonical}'")));
        }
        Ok(scheme)
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.weight_bits {
            None => write!(f, "float"),
            Some(w) => {
                write!(f, "w{w}")?;
                if let Some(a) = self.act_bits {
                    write!(f, "a{a}")?;
                }
                if let Some(g) = self.group {
                    write!(f, "-g{g}")?;
                }
                if self.per_token {
                    write!(f, "-token")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_examples_and_round_trips() {
        for s in [
            "float",
            "w8a8",
            "w4-g32",
            "w3",
            "w8a8-token",
            "w4a8-g32-token",
            "w6a6",
            "w4a8",
        ] {
            let sc = Scheme::parse(s, "--encoder").unwrap();
            assert_eq!(sc.to_string(), s);
        }
        let s = Scheme::parse("w4a8-g32-token", "--x").unwrap();
        assert_eq!(
            s,
            Scheme {
                weight_bits: Some(4),
                act_bits: Some(8),
                group: Some(32),
                per_token: true
            }
        );
    }

    #[test]
    fn rejects_bad_schemes_naming_the_flag() {
        for s in [
            "",
            "w",
            "w5",
            "w8a3",
            "w8a",
            "a8",
            "w8-token",
            "w8a8-g",
            "w8a8-g1",
            "w8-g32-g16",
            "w8a8-token-g32",
            "w8x",
            "w8-foo",
            "W8",
            "w+8",
            "w08",
            "w4-g+32",
            "w4-g032",
            "w8a08",
            "w8a+8",
        ] {
            let e = Scheme::parse(s, "--predictor")
                .err()
                .unwrap_or_else(|| panic!("{s} accepted"))
                .to_string();
            assert!(e.contains("--predictor"), "{e}");
        }
    }
}
