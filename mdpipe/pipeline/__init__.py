"""The Dagster-free pipeline layer: reading partitions, the steps each asset runs, checks and
reports. `mdpipe.defs` wraps these in Dagster objects; bench and tests call them directly."""
