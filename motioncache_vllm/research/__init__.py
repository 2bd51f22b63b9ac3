"""Research harnesses built on the runtime (imports it, never the reverse)."""
