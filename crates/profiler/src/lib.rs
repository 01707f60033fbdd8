//! profiler (being built).
