"""A seeded, deterministic fuzzer: mutated models run through the API and the CLI (issue 18)."""
