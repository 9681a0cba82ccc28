//! Cairn's load generator.
