//! LRA IMDb text task data (Maas et al., ACL 2011; Tay et al., ICLR 2021).

pub mod error;

pub use error::{Error, Result};
