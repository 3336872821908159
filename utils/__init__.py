"""Small shared helpers: atomic writes, seeding, checkpoints, environment facts, logging."""
