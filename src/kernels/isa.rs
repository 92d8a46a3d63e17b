//! Which instruction-set variant of the kernels runs: the best this CPU has, or a lower one chosen
//! with the `QWM_ISA` environment variable (to measure the AVX2 paths on a CPU with AVX-512, or
//! the portable code anywhere).
//!
//! `QWM_ISA` values: `native` (the default: the best variant the CPU runs), `avx2` (x86-64: mask
//! AVX-512, use the AVX2 kernels), `avx512`, `neon` (aarch64: mask the dot-product extension, the
//! path of Cortex-A53/A72 boards), `neon-dot`, `portable` (plain Rust everywhere). A value the CPU cannot run,
//! or an unknown one, is refused by [`check_env`] (the command line calls it first, naming the
//! variable); library callers that skip the check get the native variant and a logged warning.

use std::sync::OnceLock;

/// The environment variable that masks instruction sets.
pub const ENV: &str = "QWM_ISA";

/// Kernel variants, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust: the statement of what every variant computes.
    Portable,
    /// x86-64 AVX2 + FMA.
    Avx2,
    /// x86-64 AVX-512 F/BW with VNNI.
    Avx512Vnni,
    /// aarch64 NEON without the dot-product extension (`smull` / `sadalp`: Cortex-A53, A72).
    Neon,
    /// aarch64 NEON with `sdot` (Cortex-A55, A76, A78).
    NeonDot,
}

impl Isa {
    /// The name `QWM_ISA` uses.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512",
            Isa::Neon => "neon",
            Isa::NeonDot => "neon-dot",
        }
    }

    /// Whether this CPU runs the variant.
    pub fn supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDot => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Whether the variant's int8 kernel multiplies `a - 128` (signed) rather than `a`: its
    /// zero-point correction is then taken at `zp - 128`.
    pub fn signed_activations(self) -> bool {
        matches!(self, Isa::Neon | Isa::NeonDot)
    }

    /// The best variant this CPU runs.
    pub fn native() -> Isa {
        [Isa::Avx512Vnni, Isa::Avx2, Isa::NeonDot, Isa::Neon]
            .into_iter()
            .find(|i| i.supported())
            .unwrap_or(Isa::Portable)
    }

    /// Every variant this CPU runs, lowest first (what the kernel test suites iterate over).
    pub fn available() -> Vec<Isa> {
        [
            Isa::Portable,
            Isa::Avx2,
            Isa::Avx512Vnni,
            Isa::Neon,
            Isa::NeonDot,
        ]
        .into_iter()
        .filter(|i| i.supported())
        .collect()
    }

    /// Parse a `QWM_ISA` value.
    pub fn parse(s: &str) -> Result<Isa, String> {
        let isa = match s {
            "native" | "" => return Ok(Isa::native()),
            "portable" => Isa::Portable,
            "avx2" => Isa::Avx2,
            "avx512" => Isa::Avx512Vnni,
            "neon" => Isa::Neon,
            "neon-dot" => Isa::NeonDot,
            _ => {
                return Err(format!(
                    "{ENV}={s}: unknown instruction set (expected native, avx2, avx512, neon, neon-dot or portable)"
                ))
            }
        };
        if !isa.supported() {
            return Err(format!(
                "{ENV}={s}: this CPU cannot run it (it runs: {})",
                Isa::available()
                    .iter()
                    .map(|i| i.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(isa)
    }

    /// The variant the kernels run: `QWM_ISA` if set and valid, else [`Isa::native`]. Read once.
    pub fn selected() -> Isa {
        Isa::requested().unwrap_or_else(Isa::native)
    }

    /// The variant `QWM_ISA` asks for (`None` when unset, `native`, or invalid). Read once.
    pub fn requested() -> Option<Isa> {
        static REQ: OnceLock<Option<Isa>> = OnceLock::new();
        *REQ.get_or_init(|| match std::env::var(ENV) {
            Err(_) => None,
            Ok(v) if v == "native" || v.is_empty() => None,
            Ok(v) => Isa::parse(&v)
                .map_err(|e| log::warn!("{e}; using {}", Isa::native().name()))
                .ok(),
        })
    }

    /// Whether kernels outside this enum's list (the f32 attention's AVX-512 tiles, which need
    /// only AVX-512F) may use AVX-512: yes unless `QWM_ISA` masks it.
    pub fn avx512_allowed() -> bool {
        Isa::requested().is_none_or(|r| r >= Isa::Avx512Vnni)
    }
}

/// Refuse an invalid `QWM_ISA` (unknown, or not runnable on this CPU), naming the variable.
pub fn check_env() -> Result<(), String> {
    match std::env::var(ENV) {
        Ok(v) => Isa::parse(&v).map(|_| ()),
        Err(std::env::VarError::NotPresent) => Ok(()),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{ENV} is not valid UTF-8")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(Isa::parse("portable"), Ok(Isa::Portable));
        assert_eq!(Isa::parse("native"), Ok(Isa::native()));
        let e = Isa::parse("sse9").unwrap_err();
        assert!(e.contains("QWM_ISA=sse9"), "{e}");
        for i in [Isa::Avx2, Isa::Avx512Vnni, Isa::Neon, Isa::NeonDot] {
            assert_eq!(Isa::parse(i.name()).is_ok(), i.supported(), "{i:?}");
        }
        let a = Isa::available();
        assert_eq!(a[0], Isa::Portable);
        assert_eq!(*a.last().unwrap(), Isa::native());
    }
}
