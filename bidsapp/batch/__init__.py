"""Many jobs: several subjects at once on one machine (--jobs) and SLURM arrays."""
