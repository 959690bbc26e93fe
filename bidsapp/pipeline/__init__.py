"""One subject's job, stage by stage as data flows: stage → convert → gate → publish; then group."""
