"""The Dagster-free pipeline layer, between the pure core and `mdpipe.defs`:

  read        partitions from the lake into the core's batch driver (`compute_partition`)
  steps       what each asset does for one partition: read, call the core, write, check
  reports     evaluation reports rendered by the core, published atomically into the lake
  recordings  price paths read straight from the bundled recordings (tests and bench)

`mdpipe.defs` wraps these in Dagster objects; bench and tests call them directly.
"""
