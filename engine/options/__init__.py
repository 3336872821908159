"""Flag groups of both CLIs, the sweep configuration dataclass and the resume check."""
