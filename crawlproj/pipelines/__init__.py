"""Item pipelines: MongoDB (batched upserts, spill files while it is away)."""
