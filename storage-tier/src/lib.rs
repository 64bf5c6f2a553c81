//! Tiered block storage (see README.md).
