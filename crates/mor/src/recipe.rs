//! A reduction recipe: a reducer ([`Method`]), optional per-layer reducer overrides, an optional
//! order allocation replacing the reducer's own ([`Allocation`]) and an optional post-step, named
//! `<method>[<layers>=<method>][@<allocation>][+<post-step>]` everywhere (configs, CLI, CSV,
//! plots), e.g. `emodal`, `emodal+refit`, `h2+refit-seq`, `emodal@sens+refit`, `lqo-h2@uniform`,
//! `bt[1=modal]`.
//!
//! A layer override `[<layers>=<method>]` reduces the listed layers (1-based, input side first;
//! numbers and ranges such as `1`, `1,2`, `2-6`) by another reducer at the **same orders** the
//! recipe's allocation gives them ([`crate::reduce::apply_override`]): `bt[1=modal]` is balanced
//! truncation with layer 1 reduced by its h2 contributions instead (the layer-swap hybrid of
//! `results/imdb/README.md`).
//!
//! The allocations split the model's budget of kept modes over the layers ([`crate::alloc`]):
//! - `uniform`: the same ratio in every layer;
//! - `bound` (`lqo-h2` only): by the output-error bound's layer weights;
//! - `sens`: by the measured calibration logit change of each layer reduced alone (with the
//!   recipe's reducer and post-step).
//!
//! The post-steps change a reduced model without changing its orders:
//! - `refit`: the least-squares refit of every layer's output matrices on the layer inputs the
//!   full model records on calibration (training) sequences ([`crate::refit`]);
//! - `refit-seq`: the same, layer after layer, each fitted on the inputs of the already
//!   refitted reduced upstream layers to the full model's layer output, so it also compensates
//!   upstream error (reported separately: it is "error-compensating", not a pure block fit).

use crate::alloc::Allocation;
use crate::error::{Error, Result};
use crate::reduce::Method;

/// A post-step applied to the reduced model ([module doc](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PostStep {
    /// Per-layer least-squares refit of `C̃`, `C̃_rev` on the full model's recorded inputs.
    Refit,
    /// Sequential refit on the reduced upstream's inputs (error-compensating).
    RefitSeq,
}

impl PostStep {
    /// Every post-step, in table order.
    pub const ALL: [PostStep; 2] = [PostStep::Refit, PostStep::RefitSeq];

    /// The name after the `+` (`refit`, `refit-seq`).
    pub fn name(self) -> &'static str {
        match self {
            PostStep::Refit => "refit",
            PostStep::RefitSeq => "refit-seq",
        }
    }
}

/// Layers reduced by another reducer than the recipe's ([module doc](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LayerOverride {
    /// The reducer of those layers.
    pub method: Method,
    /// Bit `ℓ` set: layer `ℓ` (0-based) is reduced by `method`. At most 64 layers.
    pub layers: u64,
}

impl LayerOverride {
    /// The 0-based layers it covers, increasing.
    pub fn layer_list(&self) -> Vec<usize> {
        (0..64).filter(|l| self.layers >> l & 1 == 1).collect()
    }
}

impl std::fmt::Display for LayerOverride {
    /// `[1,3-5=modal]` (1-based, runs of consecutive layers as ranges).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ls = self.layer_list();
        let mut parts = Vec::new();
        let mut i = 0;
        while i < ls.len() {
            let mut j = i;
            while j + 1 < ls.len() && ls[j + 1] == ls[j] + 1 {
                j += 1;
            }
            parts.push(if i == j {
                format!("{}", ls[i] + 1)
            } else {
                format!("{}-{}", ls[i] + 1, ls[j] + 1)
            });
            i = j + 1;
        }
        write!(f, "[{}={}]", parts.join(","), self.method.name())
    }
}

/// Parses `<layers>=<method>` (the inside of the brackets); `whole` names the recipe in errors.
fn parse_override(inner: &str, whole: &str) -> Result<LayerOverride> {
    let bad = |why: &str| {
        Error::Argument(format!(
            "layer override `[{inner}]` in `{whole}`: {why}; expected `<method>[<layers>=<method>]` \
             with 1-based layers such as `1`, `1,2` or `2-6`, e.g. `bt[1=modal]`"
        ))
    };
    let (spec, method) = inner.split_once('=').ok_or_else(|| bad("no `=`"))?;
    let method: Method = method.trim().parse()?;
    let mut layers = 0u64;
    for part in spec.split(',') {
        let part = part.trim();
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let num = |x: &str| -> Result<u32> {
            x.trim()
                .parse::<u32>()
                .ok()
                .filter(|&n| (1..=64).contains(&n))
                .ok_or_else(|| bad(&format!("`{x}` is not a layer number in 1..=64")))
        };
        let (a, b) = (num(a)?, num(b)?);
        if a > b {
            return Err(bad(&format!("the range `{part}` is empty")));
        }
        for l in a..=b {
            layers |= 1 << (l - 1);
        }
    }
    Ok(LayerOverride { method, layers })
}

/// A reducer, optional layer overrides, an optional allocation and an optional post-step
/// ([module doc](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Recipe {
    /// The block reducer (with its own order allocation unless `alloc` is set).
    pub reducer: Method,
    /// Layers reduced by another reducer at the same orders, if any.
    pub overrides: Option<LayerOverride>,
    /// The order allocation replacing the reducer's own, if any.
    pub alloc: Option<Allocation>,
    /// Applied after the reduction, if any.
    pub post: Option<PostStep>,
}

impl Recipe {
    /// Whether the recipe needs calibration (training) data beyond the model itself.
    pub fn needs_calibration(&self) -> bool {
        self.post.is_some()
            || matches!(
                self.alloc,
                Some(Allocation::Sensitivity | Allocation::FirstOrder)
            )
            || [Some(self.reducer), self.overrides.map(|o| o.method)]
                .into_iter()
                .flatten()
                .any(|m| {
                    matches!(
                        m,
                        Method::Ebt | Method::Emodal | Method::LqoH2 | Method::LqoH2Taylor
                    )
                })
    }
}

impl From<Method> for Recipe {
    fn from(reducer: Method) -> Self {
        Recipe {
            reducer,
            overrides: None,
            alloc: None,
            post: None,
        }
    }
}

impl std::fmt::Display for Recipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reducer.name())?;
        if let Some(o) = self.overrides {
            write!(f, "{o}")?;
        }
        if let Some(a) = self.alloc {
            write!(f, "@{}", a.name())?;
        }
        if let Some(p) = self.post {
            write!(f, "+{}", p.name())?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Recipe {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (method, post) = match s.split_once('+') {
            None => (s, None),
            Some((m, p)) => {
                let post = PostStep::ALL
                    .into_iter()
                    .find(|q| q.name() == p)
                    .ok_or_else(|| {
                        let names: Vec<_> = PostStep::ALL.iter().map(|q| q.name()).collect();
                        Error::Argument(format!(
                            "unknown post-step `{p}` in `{s}`; expected `<method>+<post-step>` \
                             with a post-step among: {}",
                            names.join(", ")
                        ))
                    })?;
                (m, Some(post))
            }
        };
        let (method, alloc) = match method.split_once('@') {
            None => (method, None),
            Some((m, a)) => {
                let alloc = Allocation::ALL
                    .into_iter()
                    .find(|q| q.name() == a)
                    .ok_or_else(|| {
                        let names: Vec<_> = Allocation::ALL.iter().map(|q| q.name()).collect();
                        Error::Argument(format!(
                            "unknown allocation `{a}` in `{s}`; expected \
                             `<method>@<allocation>[+<post-step>]` with an allocation among: {}",
                            names.join(", ")
                        ))
                    })?;
                (m, Some(alloc))
            }
        };
        let (method, overrides) = match method.split_once('[') {
            None => (method, None),
            Some((m, rest)) => {
                let inner = rest.strip_suffix(']').ok_or_else(|| {
                    Error::Argument(format!(
                        "`{s}`: a layer override must close with `]` before `@` or `+`"
                    ))
                })?;
                (m, Some(parse_override(inner, s)?))
            }
        };
        let reducer: Method = method.parse()?;
        if alloc == Some(Allocation::Bound)
            && !matches!(reducer, Method::LqoH2 | Method::LqoH2Taylor)
        {
            return Err(Error::Argument(format!(
                "`{s}`: the `bound` allocation uses the LQO layer weights of `lqo-h2` and exists \
                 only as `lqo-h2@bound` (or `lqo-h2-taylor`, whose own allocation it is)"
            )));
        }
        Ok(Recipe {
            reducer,
            overrides,
            alloc,
            post,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_overrides_round_trip() {
        let r: Recipe = "bt[1=modal]".parse().unwrap();
        assert_eq!(r.reducer, Method::Bt);
        assert_eq!(
            r.overrides,
            Some(LayerOverride {
                method: Method::Modal,
                layers: 1
            })
        );
        assert_eq!(r.to_string(), "bt[1=modal]");
        let r: Recipe = "uniform-hinf[2-6=modal]@uniform+refit".parse().unwrap();
        assert_eq!(r.overrides.unwrap().layer_list(), vec![1, 2, 3, 4, 5]);
        assert_eq!(
            (r.alloc, r.post),
            (Some(Allocation::Uniform), Some(PostStep::Refit))
        );
        assert_eq!(r.to_string(), "uniform-hinf[2-6=modal]@uniform+refit");
        let r: Recipe = "h2[1,3,4,6=emodal]".parse().unwrap();
        assert_eq!(r.to_string(), "h2[1,3-4,6=emodal]");
        assert!(
            r.needs_calibration(),
            "emodal in the override needs Gramians"
        );
        assert!(!"bt[1=modal]".parse::<Recipe>().unwrap().needs_calibration());
        for bad in [
            "bt[1=nope]",
            "bt[0=modal]",
            "bt[65=modal]",
            "bt[3-1=modal]",
            "bt[1modal]",
            "bt[1=modal",
            "bt[=modal]",
            "bt[1=modal]x",
        ] {
            let e = bad.parse::<Recipe>();
            assert!(e.is_err(), "{bad}");
        }
    }

    #[test]
    fn names_round_trip() {
        for m in Method::ALL {
            let plain: Recipe = m.name().parse().unwrap();
            assert_eq!(plain, Recipe::from(m));
            assert_eq!(plain.to_string(), m.name());
            for p in PostStep::ALL {
                let name = format!("{m}+{}", p.name());
                let r: Recipe = name.parse().unwrap();
                assert_eq!(r.reducer, m);
                assert_eq!(r.post, Some(p));
                assert_eq!(r.to_string(), name);
                assert!(r.needs_calibration());
                for a in Allocation::ALL.into_iter().filter(|&a| {
                    a != Allocation::Bound || matches!(m, Method::LqoH2 | Method::LqoH2Taylor)
                }) {
                    let name = format!("{m}@{}+{}", a.name(), p.name());
                    let r: Recipe = name.parse().unwrap();
                    assert_eq!((r.reducer, r.alloc, r.post), (m, Some(a), Some(p)));
                    assert_eq!(r.to_string(), name);
                    let name = format!("{m}@{}", a.name());
                    let r: Recipe = name.parse().unwrap();
                    assert_eq!((r.reducer, r.alloc, r.post), (m, Some(a), None));
                    assert_eq!(r.to_string(), name);
                }
            }
        }
        assert!("modal@sens".parse::<Recipe>().unwrap().needs_calibration());
        assert!("lqo-h2@bound+refit".parse::<Recipe>().is_ok());
        assert!(
            !"modal@uniform"
                .parse::<Recipe>()
                .unwrap()
                .needs_calibration()
        );
        assert!(!Recipe::from(Method::Modal).needs_calibration());
        for bad in [
            "emodal+",
            "emodal+fit",
            "nope+refit",
            "+refit",
            "emodal+refit+refit",
            "emodal@",
            "emodal@greedy",
            "emodal+refit@sens",
            "emodal@sens@sens",
            "@sens",
            "h2@bound",
        ] {
            assert!(bad.parse::<Recipe>().is_err(), "{bad}");
        }
    }
}
