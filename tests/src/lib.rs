//! Integration tests live in tests/; guest sources in guests/.
