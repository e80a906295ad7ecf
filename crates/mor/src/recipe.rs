//! A reduction recipe: a reducer ([`Method`]), an optional order allocation replacing the
//! reducer's own ([`Allocation`]) and an optional post-step, named
//! `<method>[@<allocation>][+<post-step>]` everywhere (configs, CLI, CSV, plots), e.g. `emodal`,
//! `emodal+refit`, `h2+refit-seq`, `emodal@sens+refit`, `lqo-h2@uniform`.
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

/// A reducer, an optional allocation and an optional post-step ([module doc](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Recipe {
    /// The block reducer (with its own order allocation unless `alloc` is set).
    pub reducer: Method,
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
            || matches!(
                self.reducer,
                Method::Ebt | Method::Emodal | Method::LqoH2 | Method::LqoH2Taylor
            )
    }
}

impl From<Method> for Recipe {
    fn from(reducer: Method) -> Self {
        Recipe {
            reducer,
            alloc: None,
            post: None,
        }
    }
}

impl std::fmt::Display for Recipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reducer.name())?;
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
            alloc,
            post,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
