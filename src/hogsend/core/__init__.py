"""Pure domain code: definitions, durations, validation. No I/O, no framework imports."""
