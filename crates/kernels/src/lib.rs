//! kernels (being built).
