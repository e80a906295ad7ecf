//! Progress bars of the long stages (indicatif draws them on a terminal only, so logs stay
//! readable when the output is a file).

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar of `len` steps labelled `what`, with elapsed time, position and ETA.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {{msg}} ETA {{eta_precise}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb
}
