//! The end-to-end tests are one test binary, tests/e2e/ (its harness in tests/e2e/harness/).
