"""Pipeline stages: each reads its inputs from the run folder, does one thing, writes its
outputs atomically and records them in the manifest. The CLI is a thin layer over these."""
