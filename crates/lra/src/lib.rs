//! lra (under construction).
