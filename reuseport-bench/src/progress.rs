//! Progress bars for long runs (hidden when stderr is not a terminal, e.g. in CI logs).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps named after the scenario. Log lines go through
/// [`ProgressBar::suspend`] so they do not tear it.
pub fn bar(name: &str, len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>9} [{bar:32}] {pos}/{len} {elapsed_precise} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(name.to_owned());
    bar
}
